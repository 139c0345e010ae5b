//! Pure parsers for the values of `wharf` flags and deploy files.
//!
//! Each parser takes the text the operator wrote and returns the wire type of
//! `wharf_protocol`, or a message that says what is wrong and how to write it instead. The
//! same parsers serve the command-line flags and the fields of `wharf deploy -f FILE`, so
//! both accept exactly the same forms.

use std::collections::BTreeMap;

use wharf_protocol::{
    Digest, DurationMs, HealthProbe, ImageRef, PortMapping, PortProtocol, ReleaseInfo,
    RestartPolicy, VolumeMount,
};

/// Smallest memory limit Docker accepts (6 MiB); anything lower is almost surely a
/// forgotten unit (`--memory 256` is 256 bytes).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// Largest CPU limit accepted (`--cpus`), far above any real host.
pub const MAX_CPUS: u64 = 4096;

/// What a parser says about a value it refuses: what is wrong and what to write.
pub type Reason = String;

/// Parses a duration such as `250ms`, `30s`, `10m`, `1h30m` or `2d` (a bare number is
/// seconds).
pub fn duration(s: &str) -> Result<DurationMs, Reason> {
    s.parse::<DurationMs>().map_err(|e| e.to_string())
}

/// Parses a duration that must be more than zero.
pub fn positive_duration(s: &str) -> Result<DurationMs, Reason> {
    let d = duration(s)?;
    if d.as_millis() == 0 {
        return Err(format!(
            "`{s}` is zero: give a duration above zero, like 30s"
        ));
    }
    Ok(d)
}

/// Checks a digest-pinned image reference (`[registry/]repo[:tag]@sha256:<64 hex>`) and
/// returns it as written; the message is the protocol library's.
pub fn pinned_image(s: &str) -> Result<String, Reason> {
    ImageRef::parse(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// Checks a `sha256:<64 hex>` digest and returns it as written.
pub fn digest(s: &str) -> Result<String, Reason> {
    Digest::parse(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// Parses `NAME@VERSION` (`--release web@1.4.2`). The id is left for core to assign.
pub fn release(s: &str) -> Result<ReleaseInfo, Reason> {
    let usage = "write the release as NAME@VERSION, like web@1.4.2";
    let Some((name, version)) = s.split_once('@') else {
        return Err(format!("`{s}` has no `@`: {usage}"));
    };
    if name.is_empty() {
        return Err(format!("`{s}` has no release name before `@`: {usage}"));
    }
    if version.is_empty() {
        return Err(format!("`{s}` has no version after `@`: {usage}"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
    {
        return Err(format!(
            "release name `{name}` may only hold letters, digits, `_`, `.`, `-` and `/`: {usage}"
        ));
    }
    if version
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '@')
        || version.len() > 128
    {
        return Err(format!(
            "release version `{version}` must be 1 to 128 characters without spaces or `@`: {usage}"
        ));
    }
    Ok(ReleaseInfo {
        id: String::new(),
        name: name.to_owned(),
        version: version.to_owned(),
    })
}

fn port_number(s: &str, what: &str, whole: &str, usage: &str) -> Result<u16, Reason> {
    match s.parse::<u16>() {
        Ok(0) => Err(format!("the {what} port of `{whole}` is 0: {usage}")),
        Ok(p) if s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!(
            "the {what} port `{s}` of `{whole}` is not a number from 1 to 65535: {usage}"
        )),
    }
}

/// Parses a published port: `HOST:CONTAINER[/tcp|udp|sctp]`, optionally preceded by the
/// host address to bind (`127.0.0.1:8080:80`, `[::1]:8080:80/udp`).
pub fn port(s: &str) -> Result<PortMapping, Reason> {
    let usage = "write HOST:CONTAINER[/tcp|udp|sctp], like 8080:80 or 127.0.0.1:5353:53/udp";
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((spec, "tcp")) => (spec, PortProtocol::Tcp),
        Some((spec, "udp")) => (spec, PortProtocol::Udp),
        Some((spec, "sctp")) => (spec, PortProtocol::Sctp),
        Some((_, other)) => {
            return Err(format!(
                "unknown protocol `{other}` in `{s}`: use tcp, udp or sctp ({usage})"
            ))
        }
        None => (s, PortProtocol::Tcp),
    };
    let (host_ip, ports) = if let Some(rest) = spec.strip_prefix('[') {
        let Some((ip, rest)) = rest.split_once("]:") else {
            return Err(format!(
                "`{s}` opens `[` without a closing `]:` after the IPv6 address: {usage}"
            ));
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{ip}` in `{s}` is not an IPv6 address: {usage}"));
        }
        (Some(ip.to_owned()), rest)
    } else {
        match spec.matches(':').count() {
            1 => (None, spec),
            2 => {
                let (ip, rest) = spec.split_once(':').unwrap_or_default();
                if ip.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err(format!(
                        "`{ip}` in `{s}` is not an IPv4 address (write IPv6 as [ADDR]): {usage}"
                    ));
                }
                (Some(ip.to_owned()), rest)
            }
            0 => {
                return Err(format!(
                    "`{s}` names one port: give both the host and the container port, {usage}"
                ))
            }
            _ => return Err(format!("`{s}` has too many `:`: {usage}")),
        }
    };
    let Some((host, container)) = ports.split_once(':') else {
        return Err(format!(
            "`{s}` names one port: give both the host and the container port, {usage}"
        ));
    };
    Ok(PortMapping {
        host: port_number(host, "host", s, usage)?,
        container: port_number(container, "container", s, usage)?,
        protocol,
        host_ip,
    })
}

/// Checks an environment variable name: not empty, no `=`, no whitespace or control
/// characters.
pub fn env_key(key: &str) -> Result<(), Reason> {
    if key.is_empty() {
        return Err("an environment variable needs a name: write KEY=VALUE".into());
    }
    if key.contains('=') || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "environment variable name `{key}` may not hold `=`, spaces or control characters"
        ));
    }
    Ok(())
}

/// Parses `KEY=VALUE` (`--env RUST_LOG=info`; the value may be empty and may hold `=`).
pub fn env_pair(s: &str) -> Result<(String, String), Reason> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!(
            "`{s}` has no `=`: write KEY=VALUE (values are not taken from your environment)"
        ));
    };
    env_key(key)?;
    if value.contains('\0') {
        return Err(format!("the value of `{key}` holds a NUL character"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Collects `KEY=VALUE` pairs into a map, refusing a key given twice.
pub fn env_map<'a>(
    pairs: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>, Reason> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let (key, value) = env_pair(pair)?;
        if env.insert(key.clone(), value).is_some() {
            return Err(format!("`{key}` is given twice: keep one value"));
        }
    }
    Ok(env)
}

fn is_volume_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses a mount: `SOURCE:DEST[:ro|:rw]`, where SOURCE is an absolute host path or a
/// named volume and DEST an absolute path in the container.
pub fn volume(s: &str) -> Result<VolumeMount, Reason> {
    let usage = "write SOURCE:DEST[:ro], like /srv/web/data:/data or cache:/var/cache:ro";
    let parts: Vec<&str> = s.split(':').collect();
    let (source, dest, read_only) = match parts.as_slice() {
        [source, dest] => (*source, *dest, false),
        [source, dest, "ro"] => (*source, *dest, true),
        [source, dest, "rw"] => (*source, *dest, false),
        [_, _, mode] => {
            return Err(format!(
                "unknown mount mode `{mode}` in `{s}`: use ro or rw ({usage})"
            ))
        }
        [_] => return Err(format!("`{s}` has no destination: {usage}")),
        _ => return Err(format!("`{s}` has too many `:`: {usage}")),
    };
    if source.is_empty() || dest.is_empty() {
        return Err(format!("`{s}` has an empty source or destination: {usage}"));
    }
    if !source.starts_with('/') && !is_volume_name(source) {
        return Err(format!(
            "source `{source}` of `{s}` is neither an absolute host path nor a volume name \
             (letters, digits, `_`, `.`, `-`): the agent runs on another host, so write \
             host paths in full, like /srv/web/data"
        ));
    }
    if !dest.starts_with('/') {
        return Err(format!(
            "destination `{dest}` of `{s}` must be an absolute path in the container, like /data"
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(format!("`{s}` holds control characters"));
    }
    Ok(VolumeMount {
        source: source.to_owned(),
        dest: dest.to_owned(),
        read_only,
    })
}

/// Parses a Docker restart policy: `no`, `always`, `unless-stopped`, `on-failure` or
/// `on-failure:N` (at most N restarts; 0 or none means no limit).
pub fn restart(s: &str) -> Result<RestartPolicy, Reason> {
    let usage = "use no, always, unless-stopped, on-failure or on-failure:N";
    match s {
        "no" => Ok(RestartPolicy::No),
        "always" => Ok(RestartPolicy::Always),
        "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: 0 }),
        _ => match s.strip_prefix("on-failure:") {
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
                .map(|max_retries| RestartPolicy::OnFailure { max_retries })
                .ok_or_else(|| format!("`{n}` in `{s}` is not a retry count: {usage}")),
            None => Err(format!("unknown restart policy `{s}`: {usage}")),
        },
    }
}

/// Parses a memory size with Docker's binary units: `b`, `k`, `m`, `g`, `t` (optionally
/// followed by `b`, case-insensitive): `256m` is 268 435 456 bytes. A bare number is bytes.
/// Refuses less than [`MIN_MEMORY_BYTES`], as Docker does.
pub fn memory(s: &str) -> Result<u64, Reason> {
    let usage = "write a size like 256m, 512mb or 2g (binary units b, k, m, g, t)";
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: {usage}")),
    };
    let bytes = decimal_scaled(number, 1u64 << shift)
        .ok_or_else(|| format!("`{s}` is not a size: {usage}"))?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(format!(
            "`{s}` is below Docker's minimum of 6m (a bare number is bytes): {usage}"
        ));
    }
    Ok(bytes)
}

/// `number * scale` for a non-negative decimal `number` (like `1.5`), exactly, truncated to
/// an integer; `None` if it is not a decimal or overflows.
fn decimal_scaled(number: &str, scale: u64) -> Option<u64> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 18 {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let frac_scale = 10u128.pow(u32::try_from(frac.len()).ok()?);
    let total = int.checked_mul(u128::from(scale))?
        + frac_value.checked_mul(u128::from(scale))? / frac_scale;
    u64::try_from(total).ok()
}

/// Parses a CPU limit (`--cpus 0.5`) into nano-CPUs (500 000 000), exactly. At most nine
/// decimals; more than zero, at most [`MAX_CPUS`].
pub fn cpus(s: &str) -> Result<u64, Reason> {
    let usage = "write a number of CPUs like 0.5, 1 or 2.25";
    let t = s.trim();
    if t.split_once('.').is_some_and(|(_, f)| f.len() > 9) {
        return Err(format!("`{s}` has more than 9 decimals: {usage}"));
    }
    let nano = decimal_scaled(t, 1_000_000_000)
        .ok_or_else(|| format!("`{s}` is not a number: {usage}"))?;
    if nano == 0 {
        return Err(format!(
            "`{s}` CPUs is nothing: give a limit above 0 ({usage})"
        ));
    }
    if nano > MAX_CPUS * 1_000_000_000 {
        return Err(format!("`{s}` CPUs is more than {MAX_CPUS}: {usage}"));
    }
    Ok(nano)
}

/// Parses the HTTP probe `PORT/PATH` (`8080/healthz`; `8080` alone probes `/`).
pub fn health_http(s: &str) -> Result<HealthProbe, Reason> {
    let usage = "write PORT/PATH, like 8080/healthz";
    let (port, path) = match s.split_once('/') {
        Some((port, path)) => (port, format!("/{path}")),
        None => (s, "/".to_owned()),
    };
    let port = port_number(port, "health check", s, usage)?;
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the path of `{s}` holds spaces or control characters: {usage}"
        ));
    }
    Ok(HealthProbe::Http { port, path })
}

/// Parses the TCP probe port.
pub fn health_tcp(s: &str) -> Result<HealthProbe, Reason> {
    let port = port_number(s, "health check", s, "give the container port, like 5432")?;
    Ok(HealthProbe::Tcp { port })
}

/// Parses the command probe: split into words like a shell would (spaces separate words;
/// `'...'` and `"..."` quote; `\` escapes), then run without a shell. For shell syntax,
/// write `sh -c '...'`.
pub fn health_cmd(s: &str) -> Result<HealthProbe, Reason> {
    let cmd = split_words(s)?;
    if cmd.is_empty() {
        return Err("the health command is empty: give a program and its arguments".into());
    }
    Ok(HealthProbe::Exec { cmd })
}

/// Splits a command line into words, shell style, without any expansion.
pub fn split_words(s: &str) -> Result<Vec<String>, Reason> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("`{s}` has an unclosed `'`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("`{s}` has an unclosed `\"`")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("`{s}` has an unclosed `\"`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("`{s}` ends with a lone `\\`")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Checks a registry host as it appears in image references: `HOST[:PORT]`, no scheme and
/// no path.
pub fn registry_host(s: &str) -> Result<String, Reason> {
    let usage = "write the registry as it appears in image references, HOST[:PORT] \
                 (like registry.example.com or 127.0.0.1:5000), without https:// or a path";
    if s.contains("://") {
        return Err(format!("`{s}` has a scheme: {usage}"));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        return Err(format!("`{s}` is not a registry host: {usage}"));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn ports() {
        assert_eq!(
            port("8080:80").unwrap(),
            PortMapping {
                host: 8080,
                container: 80,
                protocol: PortProtocol::Tcp,
                host_ip: None
            }
        );
        let p = port("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(
            (p.host, p.container, p.protocol),
            (5353, 53, PortProtocol::Udp)
        );
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        let p = port("[::1]:9000:9000/sctp").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("::1"));
        assert_eq!(p.protocol, PortProtocol::Sctp);
        assert_eq!(port("1:2/tcp").unwrap().protocol, PortProtocol::Tcp);

        for (bad, needle) in [
            ("80", "names one port"),
            ("0:80", "is 0"),
            ("8080:65536", "not a number from 1 to 65535"),
            ("8080:+80", "not a number"),
            ("a:80", "not a number"),
            ("8080:80/icmp", "unknown protocol `icmp`"),
            ("1.2.3:80:80", "not an IPv4 address"),
            ("::1:80:80", "too many `:`"),
            ("[::1:80:80", "closing `]:`"),
            ("[zz]:80:80", "not an IPv6 address"),
            ("", "names one port"),
        ] {
            let err = port(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(err.contains("HOST:CONTAINER"), "{bad}: {err}");
        }
    }

    #[test]
    fn env() {
        assert_eq!(env_pair("A=b").unwrap(), ("A".into(), "b".into()));
        assert_eq!(env_pair("A=").unwrap(), ("A".into(), String::new()));
        assert_eq!(env_pair("URL=a=b").unwrap(), ("URL".into(), "a=b".into()));
        assert!(env_pair("A").unwrap_err().contains("has no `=`"));
        assert!(env_pair("=b").unwrap_err().contains("needs a name"));
        assert!(env_pair("A B=c").unwrap_err().contains("may not hold"));
        assert!(env_pair("A=\0").unwrap_err().contains("NUL"));
        let map = env_map(["A=1", "B=2"]).unwrap();
        assert_eq!(map.len(), 2);
        assert!(env_map(["A=1", "A=2"])
            .unwrap_err()
            .contains("`A` is given twice"));
    }

    #[test]
    fn volumes() {
        assert_eq!(
            volume("/srv/data:/data").unwrap(),
            VolumeMount {
                source: "/srv/data".into(),
                dest: "/data".into(),
                read_only: false
            }
        );
        assert!(volume("cache:/var/cache:ro").unwrap().read_only);
        assert!(!volume("cache:/var/cache:rw").unwrap().read_only);
        for (bad, needle) in [
            ("/a", "no destination"),
            ("./data:/data", "neither an absolute host path"),
            ("data:rel", "must be an absolute path"),
            ("/a:/b:rx", "unknown mount mode `rx`"),
            ("/a:/b:ro:x", "too many"),
            (":/b", "empty source"),
        ] {
            let err = volume(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn memory_units() {
        assert_eq!(memory("256m").unwrap(), 256 * 1024 * 1024);
        assert_eq!(memory("256MB").unwrap(), 256 * 1024 * 1024);
        assert_eq!(memory("1g").unwrap(), 1 << 30);
        assert_eq!(memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(memory("2GiB").unwrap(), 2 << 30);
        assert_eq!(memory("1t").unwrap(), 1 << 40);
        assert_eq!(memory("8192k").unwrap(), 8 << 20);
        assert_eq!(memory("6291456").unwrap(), MIN_MEMORY_BYTES);
        assert!(memory("256").unwrap_err().contains("minimum of 6m"));
        assert!(memory("5m").unwrap_err().contains("minimum"));
        assert!(memory("12x").unwrap_err().contains("unknown unit `x`"));
        assert!(memory("m").unwrap_err().contains("not a size"));
        assert!(memory("1.2.3m").unwrap_err().contains("not a size"));
        assert!(memory("99999999999t").unwrap_err().contains("not a size"));
    }

    #[test]
    fn cpus_to_nano() {
        assert_eq!(cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(cpus("2").unwrap(), 2_000_000_000);
        assert_eq!(cpus("1.25").unwrap(), 1_250_000_000);
        assert_eq!(cpus(".1").unwrap(), 100_000_000);
        assert_eq!(cpus("0.000000001").unwrap(), 1);
        assert!(cpus("0").unwrap_err().contains("above 0"));
        assert!(cpus("0.0000000001")
            .unwrap_err()
            .contains("more than 9 decimals"));
        assert!(cpus("-1").unwrap_err().contains("not a number"));
        assert!(cpus("half").unwrap_err().contains("not a number"));
        assert!(cpus("5000").unwrap_err().contains("more than 4096"));
    }

    #[test]
    fn restart_policies() {
        assert_eq!(restart("no").unwrap(), RestartPolicy::No);
        assert_eq!(restart("always").unwrap(), RestartPolicy::Always);
        assert_eq!(
            restart("unless-stopped").unwrap(),
            RestartPolicy::UnlessStopped
        );
        assert_eq!(
            restart("on-failure").unwrap(),
            RestartPolicy::OnFailure { max_retries: 0 }
        );
        assert_eq!(
            restart("on-failure:5").unwrap(),
            RestartPolicy::OnFailure { max_retries: 5 }
        );
        assert!(restart("on-failure:x")
            .unwrap_err()
            .contains("not a retry count"));
        assert!(restart("on-failure:-1")
            .unwrap_err()
            .contains("not a retry count"));
        assert!(restart("sometimes")
            .unwrap_err()
            .contains("unknown restart policy"));
    }

    #[test]
    fn releases() {
        let r = release("web@1.4.2").unwrap();
        assert_eq!(
            (r.name.as_str(), r.version.as_str(), r.id.as_str()),
            ("web", "1.4.2", "")
        );
        assert_eq!(
            release("team/web@2024-05-01+build.7").unwrap().version,
            "2024-05-01+build.7"
        );
        for (bad, needle) in [
            ("web", "has no `@`"),
            ("@1", "no release name"),
            ("web@", "no version"),
            ("we b@1", "may only hold"),
            ("web@1@2", "without spaces or `@`"),
            ("web@1 2", "without spaces"),
        ] {
            let err = release(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(err.contains("NAME@VERSION"), "{bad}: {err}");
        }
    }

    #[test]
    fn health_probes() {
        assert_eq!(
            health_http("8080/healthz").unwrap(),
            HealthProbe::Http {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!(
            health_http("80").unwrap(),
            HealthProbe::Http {
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            health_http("80/a/b?x=1").unwrap(),
            HealthProbe::Http {
                port: 80,
                path: "/a/b?x=1".into()
            }
        );
        assert!(health_http("x/healthz").unwrap_err().contains("PORT/PATH"));
        assert!(health_http("80/a b").unwrap_err().contains("spaces"));
        assert_eq!(health_tcp("5432").unwrap(), HealthProbe::Tcp { port: 5432 });
        assert!(health_tcp("0").is_err());
        assert_eq!(
            health_cmd("pg_isready -U 'app user'").unwrap(),
            HealthProbe::Exec {
                cmd: vec!["pg_isready".into(), "-U".into(), "app user".into()]
            }
        );
        assert!(health_cmd("  ").unwrap_err().contains("empty"));
    }

    #[test]
    fn word_splitting() {
        assert_eq!(split_words("a  b\tc").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_words(r#"sh -c "echo \"hi\" \$HOME" x\ y ''"#).unwrap(),
            ["sh", "-c", "echo \"hi\" $HOME", "x y", ""]
        );
        assert_eq!(split_words(r#""a\nb""#).unwrap(), [r"a\nb"]);
        assert!(split_words("'open").unwrap_err().contains("unclosed `'`"));
        assert!(split_words("\"open").unwrap_err().contains("unclosed `\"`"));
        assert!(split_words("end\\").unwrap_err().contains("lone"));
    }

    #[test]
    fn images_digests_durations() {
        let image = format!("registry.example.com:5000/team/web:1.4@{DIGEST}");
        assert_eq!(pinned_image(&image).unwrap(), image);
        let err = pinned_image("web:latest").unwrap_err();
        assert!(err.contains("is not pinned"), "{err}");
        assert!(digest(DIGEST).is_ok());
        assert!(digest("sha256:abc").unwrap_err().contains("instead of 64"));
        assert_eq!(duration("1h30m").unwrap(), DurationMs::from_mins(90));
        assert_eq!(duration("0s").unwrap(), DurationMs::ZERO);
        assert!(duration("soon").unwrap_err().contains("is not a duration"));
        assert!(positive_duration("0s").unwrap_err().contains("above zero"));
    }

    #[test]
    fn registry_hosts() {
        assert!(registry_host("registry.example.com").is_ok());
        assert!(registry_host("127.0.0.1:5000").is_ok());
        assert!(registry_host("localhost").is_ok());
        assert!(registry_host("https://r.example.com")
            .unwrap_err()
            .contains("scheme"));
        assert!(registry_host("r.example.com/team").is_err());
        assert!(registry_host("r:0").is_err());
        assert!(registry_host("").is_err());
    }
}
