//! Percentiles, formatting and the results table.

use std::time::Duration;

/// Nearest-rank percentiles of a set of durations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            samples[rank - 1]
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max: samples[n - 1],
        }
    }

    /// `p50 / p99 / max` in milliseconds.
    pub fn brief(&self) -> String {
        format!("{} / {} / {}", ms(self.p50), ms(self.p99), ms(self.max))
    }
}

/// A duration in milliseconds, 2 decimals under 10 ms.
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// Seconds with one decimal.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub value: String,
    pub target: String,
    /// `Some(true)`: met; `Some(false)`: not met; `None`: no target.
    pub met: Option<bool>,
}

/// The results of the run, printed as a table at the end.
#[derive(Debug, Default)]
pub struct Results {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Results {
    pub fn add(&mut self, scenario: &str, metric: impl Into<String>, value: impl Into<String>) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value: value.into(),
            target: String::new(),
            met: None,
        });
    }

    pub fn check(
        &mut self,
        scenario: &str,
        metric: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value: value.into(),
            target: target.into(),
            met: Some(met),
        });
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// A Markdown table (readable as plain text too).
    pub fn table(&self) -> String {
        let header = ["scenario", "metric", "value", "target", "met"];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.scenario.clone(),
                    r.metric.clone(),
                    r.value.clone(),
                    r.target.clone(),
                    match r.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let mut width = header.map(str::len);
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[String]| {
            let mut s = String::from("|");
            for (c, w) in row.iter().zip(width) {
                let pad = w - c.chars().count();
                s.push(' ');
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
                s.push_str(" |");
            }
            s.push('\n');
            s
        };
        let mut out = line(&header.map(String::from));
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for row in &cells {
            out.push_str(&line(row));
        }
        out
    }
}
