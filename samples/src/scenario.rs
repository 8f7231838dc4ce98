//! The scenarios: stampedes of each kind and the look-alikes that must not
//! be called stampedes, as model settings plus their ground truth.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    Baseline,
    SynchronizedExpiry,
    HotKeyExpiry,
    ColdCache,
    CacheUnavailable,
    Mitigated,
    DbSaturation,
    MultiService,
    RetryStorm,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown scenario {0:?}; known: {known}", known = Scenario::ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownScenario(pub String);

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub rps: f64,
    pub peak_factor: f64,
    pub keys: usize,
    pub zipf_s: f64,
    pub ttl_s: f64,
    pub ttl_jitter: f64,
    pub pool: usize,
    pub db_ms: f64,
    pub db_slowdown: f64,
    pub recompute_work: f64,
    pub hot_key_share: f64,
    pub hot_key_work: f64,
    pub hot_expire_at_s: Option<f64>,
    pub sync_fill_at_s: Option<f64>,
    pub sync_keys: usize,
    pub deploy_at_s: Option<f64>,
    pub cache_down_s: Option<(f64, f64)>,
    pub slow_route_at_s: Option<(f64, f64)>,
    pub slow_route_share: f64,
    pub slow_query_work: f64,
    pub single_flight: bool,
    /// XFetch (probabilistic early refresh) with this beta; 0 is off.
    pub xfetch_beta: f64,
    /// Stale-while-revalidate: serve a value this long past its TTL while
    /// one background refresh runs; 0 is off.
    pub swr_s: f64,
    /// On deploy, pre-load the keys from a snapshot before taking traffic.
    pub warm_up: bool,
    /// Circuit breaker on cache calls plus a limiter on concurrent
    /// recomputes (fail fast when full); 0 is off.
    pub recompute_limit: usize,
    pub retries: bool,
    pub client_timeout_s: f64,
    /// Connection-pool acquire timeout.
    pub pool_timeout_s: f64,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            name: "catalog",
            rps: 200.0,
            peak_factor: 1.3,
            keys: 2000,
            zipf_s: 0.9,
            ttl_s: 900.0,
            ttl_jitter: 0.0,
            pool: 20,
            db_ms: 30.0,
            db_slowdown: 10.0,
            recompute_work: 1.0,
            hot_key_share: 0.0,
            hot_key_work: 1.0,
            hot_expire_at_s: None,
            sync_fill_at_s: None,
            sync_keys: 0,
            deploy_at_s: None,
            cache_down_s: None,
            slow_route_at_s: None,
            slow_route_share: 0.0,
            slow_query_work: 1.0,
            single_flight: false,
            xfetch_beta: 0.0,
            swr_s: 0.0,
            warm_up: false,
            recompute_limit: 0,
            retries: false,
            client_timeout_s: 10.0,
            pool_timeout_s: 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub duration_s: f64,
    pub services: Vec<ServiceSpec>,
}

impl Settings {
    /// The same load with `mitigations` switched on in every service.
    pub fn with_mitigations(mut self, mitigations: &[Mitigation]) -> Self {
        for spec in &mut self.services {
            for m in mitigations {
                m.apply(spec);
            }
        }
        self
    }
}

/// The mitigations the simulated service can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mitigation {
    SingleFlight,
    TtlJitter,
    XFetch,
    StaleWhileRevalidate,
    WarmUp,
    CircuitBreaker,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown mitigation {0:?}; known: {known}", known = Mitigation::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownMitigation(pub String);

impl Mitigation {
    pub const ALL: [Mitigation; 6] = [
        Self::SingleFlight,
        Self::TtlJitter,
        Self::XFetch,
        Self::StaleWhileRevalidate,
        Self::WarmUp,
        Self::CircuitBreaker,
    ];

    /// The id the analyzer uses for the same mitigation.
    pub fn name(self) -> &'static str {
        match self {
            Self::SingleFlight => "single-flight",
            Self::TtlJitter => "ttl-jitter",
            Self::XFetch => "xfetch",
            Self::StaleWhileRevalidate => "stale-while-revalidate",
            Self::WarmUp => "warm-up",
            Self::CircuitBreaker => "circuit-breaker",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownMitigation> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMitigation(s.to_string()))
    }

    fn apply(self, spec: &mut ServiceSpec) {
        match self {
            Self::SingleFlight => spec.single_flight = true,
            Self::TtlJitter => spec.ttl_jitter = 0.3,
            Self::XFetch => spec.xfetch_beta = 1.0,
            Self::StaleWhileRevalidate => spec.swr_s = 60.0,
            Self::WarmUp => spec.warm_up = true,
            Self::CircuitBreaker => spec.recompute_limit = spec.pool,
        }
    }
}

/// What a scenario is meant to show (the designed part of its truth).
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// The incident kind, or none.
    pub kind: Option<&'static str>,
    pub service: Option<&'static str>,
    /// Seconds from the capture start when the stampede (or saturation) starts.
    pub onset_s: Option<f64>,
    pub mitigations: Vec<&'static str>,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Self::Baseline,
        Self::SynchronizedExpiry,
        Self::HotKeyExpiry,
        Self::ColdCache,
        Self::CacheUnavailable,
        Self::Mitigated,
        Self::DbSaturation,
        Self::MultiService,
        Self::RetryStorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::SynchronizedExpiry => "synchronized-expiry",
            Self::HotKeyExpiry => "hot-key-expiry",
            Self::ColdCache => "cold-cache",
            Self::CacheUnavailable => "cache-unavailable",
            Self::Mitigated => "mitigated",
            Self::DbSaturation => "db-saturation",
            Self::MultiService => "multi-service",
            Self::RetryStorm => "retry-storm",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownScenario> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| UnknownScenario(s.to_string()))
    }

    pub fn settings(self) -> Settings {
        let sync = ServiceSpec {
            sync_fill_at_s: Some(30.0),
            sync_keys: 600,
            ttl_s: 60.0,
            ..ServiceSpec::default()
        };
        let services = match self {
            Self::Baseline => vec![ServiceSpec::default()],
            Self::SynchronizedExpiry => vec![sync],
            Self::Mitigated => vec![ServiceSpec {
                single_flight: true,
                ttl_jitter: 0.3,
                ..sync
            }],
            Self::HotKeyExpiry | Self::RetryStorm => vec![ServiceSpec {
                hot_key_share: 0.35,
                hot_key_work: 25.0,
                hot_expire_at_s: Some(90.0),
                retries: self == Self::RetryStorm,
                client_timeout_s: 2.0,
                ..ServiceSpec::default()
            }],
            Self::ColdCache => vec![ServiceSpec {
                deploy_at_s: Some(90.0),
                ..ServiceSpec::default()
            }],
            Self::CacheUnavailable => vec![ServiceSpec {
                cache_down_s: Some((90.0, 130.0)),
                ..ServiceSpec::default()
            }],
            Self::DbSaturation => vec![ServiceSpec {
                slow_route_at_s: Some((90.0, 130.0)),
                slow_route_share: 0.05,
                slow_query_work: 40.0,
                ..ServiceSpec::default()
            }],
            Self::MultiService => vec![
                sync,
                ServiceSpec {
                    name: "accounts",
                    rps: 80.0,
                    ..ServiceSpec::default()
                },
            ],
        };
        Settings {
            duration_s: 180.0,
            services,
        }
    }

    /// What the scenario shows with `mitigations` switched on: no incident
    /// when one of them prevents its kind.
    pub fn expectation(self, mitigations: &[Mitigation]) -> Expectation {
        let e = self.designed();
        let prevented = e.kind.is_some_and(|kind| {
            mitigations.iter().any(|m| match (kind, m) {
                ("synchronized-expiry", Mitigation::StaleWhileRevalidate) => true,
                ("synchronized-expiry", Mitigation::SingleFlight) => {
                    mitigations.contains(&Mitigation::TtlJitter)
                }
                ("hot-key-expiry", Mitigation::XFetch | Mitigation::StaleWhileRevalidate) => {
                    self != Self::RetryStorm
                }
                ("cold-cache", Mitigation::WarmUp) => true,
                _ => false,
            })
        });
        if prevented {
            Expectation {
                kind: None,
                service: None,
                onset_s: None,
                mitigations: Vec::new(),
            }
        } else {
            e
        }
    }

    fn designed(self) -> Expectation {
        let (kind, onset, mitigations): (Option<&'static str>, Option<f64>, Vec<&'static str>) =
            match self {
                Self::Baseline | Self::Mitigated => (None, None, vec![]),
                Self::SynchronizedExpiry | Self::MultiService => (
                    Some("synchronized-expiry"),
                    Some(90.0),
                    vec!["single-flight", "ttl-jitter"],
                ),
                Self::HotKeyExpiry => (
                    Some("hot-key-expiry"),
                    Some(90.0),
                    vec!["single-flight", "xfetch"],
                ),
                Self::RetryStorm => (
                    Some("hot-key-expiry"),
                    Some(90.0),
                    vec!["single-flight", "xfetch", "backoff-jitter"],
                ),
                Self::ColdCache => (Some("cold-cache"), Some(90.0), vec!["warm-up"]),
                Self::CacheUnavailable => (
                    Some("cache-unavailable"),
                    Some(90.0),
                    vec!["stale-while-revalidate"],
                ),
                Self::DbSaturation => {
                    (Some("db-saturation"), Some(90.0), vec!["slow-query-review"])
                }
            };
        Expectation {
            kind,
            service: kind.map(|_| "catalog"),
            onset_s: onset,
            mitigations,
        }
    }
}
