//! `ImageRef::parse` and `Digest::parse` on arbitrary strings.
//!
//! Checks: no panic; an accepted reference is pinned by a sha256 digest, its full form is the
//! input, and its canonical form (`repo@sha256:…`) parses back to the same repository and
//! digest without a tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_protocol::{Digest, ImageRef};

fuzz_target!(|s: &str| {
    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.to_string(), s);
    }
    if let Ok(r) = ImageRef::parse(s) {
        assert_eq!(r.full(), s);
        let canonical = r.to_string();
        assert!(canonical.ends_with(&r.digest().to_string()));
        let again = ImageRef::parse(&canonical).expect("the canonical form parses");
        assert_eq!(again.repository(), r.repository());
        assert_eq!(again.digest(), r.digest());
        assert_eq!(again.tag(), None);
    }
});
