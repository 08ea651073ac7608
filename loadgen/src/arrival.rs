//! When each virtual client powers on.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// An arrival pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Arrival {
    /// Everyone at once: a power restore, a lab switched on by one breaker.
    Storm,
    /// Evenly spread over `over`.
    Ramp { over: Duration },
    /// Poisson arrivals at a mean rate.
    Poisson { rate_per_s: f64 },
}

impl Arrival {
    /// Start offsets of `n` clients, deterministic for a seed, in client order.
    pub fn schedule(&self, n: usize, seed: u64) -> Vec<Duration> {
        match *self {
            Arrival::Storm => vec![Duration::ZERO; n],
            Arrival::Ramp { over } => (0..n)
                .map(|i| over.mul_f64(i as f64 / n.max(1) as f64))
                .collect(),
            Arrival::Poisson { rate_per_s } => {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut t = 0.0f64;
                (0..n)
                    .map(|_| {
                        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                        t += -u.ln() / rate_per_s;
                        Duration::from_secs_f64(t)
                    })
                    .collect()
            }
        }
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arrival::Storm => write!(f, "storm"),
            Arrival::Ramp { over } => write!(f, "ramp:{}s", over.as_secs_f64()),
            Arrival::Poisson { rate_per_s } => write!(f, "poisson:{rate_per_s}"),
        }
    }
}

impl FromStr for Arrival {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "storm" if arg.is_empty() => Ok(Arrival::Storm),
            "ramp" => {
                let secs: f64 = arg
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("ramp needs a duration, e.g. ramp:30s (got {arg:?})"))?;
                if !(secs.is_finite() && secs >= 0.0) {
                    return Err("ramp duration must be >= 0".into());
                }
                Ok(Arrival::Ramp {
                    over: Duration::from_secs_f64(secs),
                })
            }
            "poisson" => {
                let rate: f64 = arg
                    .parse()
                    .map_err(|_| format!("poisson needs a rate, e.g. poisson:50 (got {arg:?})"))?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err("poisson rate must be > 0".into());
                }
                Ok(Arrival::Poisson { rate_per_s: rate })
            }
            _ => Err(format!(
                "unknown arrival {s:?}: storm, ramp:30s or poisson:50"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(Arrival::Storm.schedule(3, 1), vec![Duration::ZERO; 3]);
        let r = "ramp:10s"
            .parse::<Arrival>()
            .expect("parse")
            .schedule(10, 1);
        assert!(r.windows(2).all(|w| w[0] <= w[1]));
        assert!(r[9] < Duration::from_secs(10));
        let p = "poisson:100"
            .parse::<Arrival>()
            .expect("parse")
            .schedule(2000, 7);
        let rate = 2000.0 / p[1999].as_secs_f64();
        assert!((80.0..120.0).contains(&rate), "rate {rate}");
        assert_eq!(
            p,
            "poisson:100"
                .parse::<Arrival>()
                .expect("parse")
                .schedule(2000, 7)
        );
        assert!("poisson:0".parse::<Arrival>().is_err());
        assert!("bogus".parse::<Arrival>().is_err());
    }
}
