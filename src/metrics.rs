//! Every metric Leaseline exports, defined in one place. Labels are bounded (pool, state,
//! outcome, reason, route, method, status): never a number, session, caller or lease id.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub pool_numbers: IntGaugeVec,
    pub pool_size: IntGaugeVec,
    pub pool_saturation: GaugeVec,
    pub pool_offered: GaugeVec,
    pub pool_recommended: IntGaugeVec,
    pub allocations: IntCounterVec,
    pub renewals: IntCounterVec,
    pub releases: IntCounterVec,
    pub expiries: IntCounterVec,
    pub lease_lifetime: HistogramVec,
    pub http_duration: HistogramVec,
    pub wheel_pending: IntGauge,
    pub wheel_lag: Gauge,
    pub flush_duration: Histogram,
    pub flush_batch: Histogram,
    pub store_size: IntGauge,
    pub store_failures: IntCounterVec,
    pub live_leases: IntGauge,
    pub calls: IntCounterVec,
    pub call_ends: IntCounterVec,
    pub billed_seconds: IntCounterVec,
    pub amount: IntCounterVec,
    pub first_call: HistogramVec,
    pub paid: IntCounterVec,
    pub redeemed: IntCounterVec,
    pub sse_clients: IntGauge,
    pub tickets_issued: IntCounterVec,
    pub ticket_redeems: IntCounterVec,
    pub limited: IntCounterVec,
    pub connections: IntGauge,
    pub connections_dropped: IntCounterVec,
    pub reloads: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_queue: IntGaugeVec,
    pub webhook_oldest: GaugeVec,
}

/// What one webhook attempt came to: the `outcome` label of
/// `leaseline_webhook_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It failed (non-2xx, timeout, connection error); another attempt is scheduled.
    Retried,
    /// It failed and `max_age` is reached: given up (an operator may retry it).
    Failed,
}

impl WebhookOutcome {
    pub const ALL: [WebhookOutcome; 3] = [
        WebhookOutcome::Delivered,
        WebhookOutcome::Retried,
        WebhookOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Retried => "retried",
            WebhookOutcome::Failed => "failed",
        }
    }
}

/// Why the connection layer closed a connection on its own: the `reason` label of
/// `leaseline_http_connections_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The request head did not arrive whole within `header_timeout`.
    HeaderTimeout,
    /// No request for `idle_timeout`.
    IdleTimeout,
    /// `max_connections` were open: answered 503 (or refused) at once.
    OverCapacity,
    /// Still open when shutdown's `drain_timeout` ran out.
    DrainTimeout,
    /// Its address already held `max_connections_per_ip`: answered 429 (or refused) at once.
    PerIp,
    /// Its /24 or /56 already held `max_connections_per_prefix`: answered 429 (or refused).
    PerPrefix,
}

impl Dropped {
    pub const ALL: [Dropped; 6] = [
        Dropped::HeaderTimeout,
        Dropped::IdleTimeout,
        Dropped::OverCapacity,
        Dropped::DrainTimeout,
        Dropped::PerIp,
        Dropped::PerPrefix,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::HeaderTimeout => "header_timeout",
            Dropped::IdleTimeout => "idle_timeout",
            Dropped::OverCapacity => "over_capacity",
            Dropped::DrainTimeout => "drain_timeout",
            Dropped::PerIp => "per_ip",
            Dropped::PerPrefix => "per_prefix",
        }
    }
}

/// Which hour `leaseline_pool_offered_erlangs` measures: the `window` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    LastHour,
    BusiestHour,
}

impl Window {
    pub const ALL: [Window; 2] = [Window::LastHour, Window::BusiestHour];

    pub fn as_str(self) -> &'static str {
        match self {
            Window::LastHour => "last_hour",
            Window::BusiestHour => "busiest_hour",
        }
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let lifetime_buckets = vec![
            10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        ];
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let m = Metrics {
            pool_numbers: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "leaseline_pool_numbers",
                        "Numbers of a pool by state (free, leased, cooling).",
                    ),
                    &["pool", "state"],
                )
                .unwrap(),
            ),
            pool_size: reg(
                r,
                IntGaugeVec::new(
                    opts("leaseline_pool_size", "Numbers configured in a pool."),
                    &["pool"],
                )
                .unwrap(),
            ),
            pool_saturation: reg(
                r,
                GaugeVec::new(
                    opts(
                        "leaseline_pool_saturation_ratio",
                        "Share of a pool's numbers not free (leased or cooling), 0 to 1.",
                    ),
                    &["pool"],
                )
                .unwrap(),
            ),
            pool_offered: reg(
                r,
                GaugeVec::new(
                    opts(
                        "leaseline_pool_offered_erlangs",
                        "Load offered to a pool in Erlangs (requests for a new number a second times the mean time a number is held: lifetime plus quarantine), by window (last_hour, busiest_hour of the last 7 days).",
                    ),
                    &["pool", "window"],
                )
                .unwrap(),
            ),
            pool_recommended: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "leaseline_pool_recommended_size",
                        "Fewest numbers that keep a pool's blocking under 1% at the busiest hour of the last 7 days (Erlang-B); compare with leaseline_pool_size.",
                    ),
                    &["pool"],
                )
                .unwrap(),
            ),
            allocations: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_allocations_total",
                        "Allocation requests by outcome (new, sticky, shared_code, rejected, limited, error).",
                    ),
                    &["pool", "outcome"],
                )
                .unwrap(),
            ),
            renewals: reg(
                r,
                IntCounterVec::new(
                    opts("leaseline_renewals_total", "Leases renewed."),
                    &["pool"],
                )
                .unwrap(),
            ),
            releases: reg(
                r,
                IntCounterVec::new(
                    opts("leaseline_releases_total", "Leases released by their site."),
                    &["pool"],
                )
                .unwrap(),
            ),
            expiries: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_expiries_total",
                        "Leases that reached their deadline.",
                    ),
                    &["pool"],
                )
                .unwrap(),
            ),
            lease_lifetime: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "leaseline_lease_lifetime_seconds",
                        "How long leases lived, from creation to expiry or release.",
                    )
                    .buckets(lifetime_buckets),
                    &["pool"],
                )
                .unwrap(),
            ),
            http_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "leaseline_http_request_duration_seconds",
                        "HTTP requests by matched route, method and status.",
                    )
                    .buckets(latency_buckets.clone()),
                    &["route", "method", "status"],
                )
                .unwrap(),
            ),
            wheel_pending: reg(
                r,
                IntGauge::new(
                    "leaseline_wheel_pending_entries",
                    "Timing wheel entries waiting to fire.",
                )
                .unwrap(),
            ),
            wheel_lag: reg(
                r,
                Gauge::new(
                    "leaseline_wheel_lag_seconds",
                    "How far the wheel's last fired tick is behind the clock.",
                )
                .unwrap(),
            ),
            flush_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "leaseline_store_flush_duration_seconds",
                        "Duration of one durable flush (one group commit).",
                    )
                    .buckets(latency_buckets),
                )
                .unwrap(),
            ),
            flush_batch: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "leaseline_store_flush_batch_size",
                        "Acknowledged writes made durable by one flush.",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                )
                .unwrap(),
            ),
            store_size: reg(
                r,
                IntGauge::new(
                    "leaseline_store_size_bytes",
                    "Size of the sled store on disk.",
                )
                .unwrap(),
            ),
            store_failures: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_store_failures_total",
                        "Store writes or flushes that failed.",
                    ),
                    &["op"],
                )
                .unwrap(),
            ),
            live_leases: reg(
                r,
                IntGauge::new(
                    "leaseline_lease_records",
                    "Lease records held (live and recently ended).",
                )
                .unwrap(),
            ),
            calls: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_calls_total",
                        "Call starts by pool and attribution reason (code, caller, return, active, grace, not_leased, unknown_number).",
                    ),
                    &["pool", "reason"],
                )
                .unwrap(),
            ),
            call_ends: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_call_ends_total",
                        "Call ends by pool and whether the call counted toward its lease.",
                    ),
                    &["pool", "counted"],
                )
                .unwrap(),
            ),
            billed_seconds: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_billed_seconds_total",
                        "Seconds billed by pools' tariffs (durations rounded up to the increment), by pool.",
                    ),
                    &["pool"],
                )
                .unwrap(),
            ),
            amount: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_amount_total",
                        "What calls cost under their pool's tariff, in cents (hundredths of the currency), by pool and currency: an integer counter, never a float.",
                    ),
                    &["pool", "currency"],
                )
                .unwrap(),
            ),
            first_call: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "leaseline_lease_first_call_seconds",
                        "Time from a lease's creation to its first attributed call.",
                    )
                    // Most first calls come within seconds of the number being shown (the
                    // visitor dials it at once): fine buckets there, so the p50 is read from
                    // the data rather than interpolated inside one wide bucket.
                    .buckets(vec![
                        1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0,
                        600.0, 900.0, 1800.0, 3600.0,
                    ]),
                    &["pool"],
                )
                .unwrap(),
            ),
            paid: reg(
                r,
                IntCounterVec::new(opts("leaseline_leases_paid_total", "Leases that reached their required calls."), &["pool"])
                    .unwrap(),
            ),
            redeemed: reg(
                r,
                IntCounterVec::new(opts("leaseline_redeems_total", "Redeem attempts by outcome (ok, not_paid, already)."), &["pool", "outcome"])
                    .unwrap(),
            ),
            sse_clients: reg(
                r,
                IntGauge::new("leaseline_event_streams", "Open lease event streams (Server-Sent Events).").unwrap(),
            ),
            tickets_issued: reg(
                r,
                IntCounterVec::new(
                    opts("leaseline_tickets_issued_total", "Access codes issued on ticketing numbers."),
                    &["pool"],
                )
                .unwrap(),
            ),
            ticket_redeems: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_ticket_redeems_total",
                        "Access code redeem attempts by outcome (ok, unknown, expired, already); failed ones have pool=\"\".",
                    ),
                    &["pool", "outcome"],
                )
                .unwrap(),
            ),
            webhook_deliveries: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_webhook_deliveries_total",
                        "Webhook delivery attempts by endpoint and outcome (delivered, retried, failed: given up).",
                    ),
                    &["endpoint", "outcome"],
                )
                .unwrap(),
            ),
            webhook_queue: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "leaseline_webhook_queue_depth",
                        "Webhook deliveries pending per endpoint.",
                    ),
                    &["endpoint"],
                )
                .unwrap(),
            ),
            webhook_oldest: reg(
                r,
                GaugeVec::new(
                    opts(
                        "leaseline_webhook_oldest_pending_seconds",
                        "Age of the oldest pending webhook delivery per endpoint (0 when none).",
                    ),
                    &["endpoint"],
                )
                .unwrap(),
            ),
            reloads: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_config_reloads_total",
                        "Configuration reloads (SIGHUP, POST /v1/admin/reload), by outcome (ok, refused).",
                    ),
                    &["outcome"],
                )
                .unwrap(),
            ),
            limited: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_rejected_by_limits_total",
                        "Requests refused by an abuse limit (429), by limit.",
                    ),
                    &["limit"],
                )
                .unwrap(),
            ),
            connections: reg(
                r,
                IntGauge::new(
                    "leaseline_http_connections",
                    "Client connections open now (at most [server] max_connections).",
                )
                .unwrap(),
            ),
            connections_dropped: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "leaseline_http_connections_dropped_total",
                        "Connections the server closed on its own, by reason (header_timeout, idle_timeout, over_capacity, per_ip, per_prefix, drain_timeout).",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            registry,
        };
        let build = reg(
            &m.registry,
            IntGaugeVec::new(
                opts(
                    "leaseline_build_info",
                    "Always 1; labels say which build runs.",
                ),
                &["version"],
            )
            .unwrap(),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for op in ["write", "flush"] {
            m.store_failures.with_label_values(&[op]);
        }
        for outcome in ["unknown", "expired", "already"] {
            m.ticket_redeems.with_label_values(&["", outcome]);
        }
        for limit in crate::limits::Limit::ALL {
            m.limited.with_label_values(&[limit.as_str()]);
        }
        for outcome in ["ok", "refused"] {
            m.reloads.with_label_values(&[outcome]);
        }
        for reason in Dropped::ALL {
            m.connections_dropped.with_label_values(&[reason.as_str()]);
        }
        // Calls to numbers of no pool are counted under pool="".
        for reason in crate::core::Reason::ALL {
            m.calls.with_label_values(&["", reason.as_str()]);
        }
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        m
    }

    /// Creates every labelled series of a pool at zero, so dashboards and alerts see a
    /// series (and `rate()` a starting point) before the first event of each kind.
    pub fn register_pool(&self, pool: &str, currency: Option<&str>) {
        self.billed_seconds.with_label_values(&[pool]);
        if let Some(c) = currency {
            self.amount.with_label_values(&[pool, c]);
        }
        for state in ["free", "leased", "cooling"] {
            self.pool_numbers.with_label_values(&[pool, state]);
        }
        for outcome in [
            "new",
            "sticky",
            "shared_code",
            "rejected",
            "limited",
            "error",
        ] {
            self.allocations.with_label_values(&[pool, outcome]);
        }
        for reason in crate::core::Reason::ALL {
            self.calls.with_label_values(&[pool, reason.as_str()]);
        }
        for counted in ["true", "false"] {
            self.call_ends.with_label_values(&[pool, counted]);
        }
        for outcome in ["ok", "not_paid", "already"] {
            self.redeemed.with_label_values(&[pool, outcome]);
        }
        self.renewals.with_label_values(&[pool]);
        self.releases.with_label_values(&[pool]);
        self.expiries.with_label_values(&[pool]);
        self.paid.with_label_values(&[pool]);
        self.tickets_issued.with_label_values(&[pool]);
        self.ticket_redeems.with_label_values(&[pool, "ok"]);
        self.lease_lifetime.with_label_values(&[pool]);
        self.first_call.with_label_values(&[pool]);
        self.pool_size.with_label_values(&[pool]);
        self.pool_saturation.with_label_values(&[pool]);
        for window in Window::ALL {
            self.pool_offered
                .with_label_values(&[pool, window.as_str()]);
        }
        self.pool_recommended.with_label_values(&[pool]);
    }

    /// Creates a webhook endpoint's series at zero (names come from pool.toml: bounded).
    pub fn register_webhook(&self, endpoint: &str) {
        for o in WebhookOutcome::ALL {
            self.webhook_deliveries
                .with_label_values(&[endpoint, o.as_str()]);
        }
        self.webhook_queue.with_label_values(&[endpoint]);
        self.webhook_oldest.with_label_values(&[endpoint]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
