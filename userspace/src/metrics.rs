//! Prometheus metrics (`bpfnet daemon --metrics ADDR:PORT`, off by default): `GET /metrics`
//! answers the text exposition format. Encoded with prometheus-client, the Prometheus project's
//! Rust client. What is read at every scrape: the datapath's counters by reason, the connection
//! table's use, and the number of networks, endpoints, services and backends; what the daemon
//! records as it goes: the duration of every API request and Docker plugin call.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        family::Family,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{
    api,
    datapath::Counters,
    limits::{self, Limits},
    snapshot::Published,
};

/// Labels of a request's duration: its method and route (the route's pattern, not the path:
/// network names would make one series per network).
type RequestLabels = Vec<(String, String)>;

/// The metrics the daemon records as it runs; cheap to clone (shared).
#[derive(Clone)]
pub struct Recorder {
    requests: Family<RequestLabels, Histogram>,
}

impl Default for Recorder {
    fn default() -> Self {
        // 100 us to about 6.5 s.
        Self { requests: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 17))) }
    }
}

impl Recorder {
    /// Records one request of `method` on `route` that took `seconds`.
    pub fn request(&self, method: &str, route: &str, seconds: f64) {
        self.requests.get_or_create(&vec![("method".to_string(), method.to_string()), ("route".to_string(), route.to_string())]).observe(seconds);
    }

    /// A middleware recording every request's duration (the API's router).
    pub async fn layer(State(recorder): State<Recorder>, req: Request, next: Next) -> Response {
        let method = req.method().to_string();
        let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
        let start = Instant::now();
        let response = next.run(req).await;
        recorder.request(&method, &route, start.elapsed().as_secs_f64());
        response
    }
}

/// What a scrape reads, gathered before encoding (encoding cannot wait for the kernel).
#[derive(Debug, Default)]
struct Snapshot {
    counters: Vec<(String, bool, u64)>,
    conntrack: Option<api::ConntrackUsage>,
    networks: usize,
    endpoints_attached: usize,
    endpoints_allocated: usize,
    services: usize,
    backends: usize,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut e = encoder.encode_descriptor(
            "bpfnet_datapath_packets",
            "Packets the datapath handled, by what it did (counter) and whether that was a drop (kind)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, drop, value) in &self.counters {
            let labels = [("counter", name.as_str()), ("kind", if *drop { "drop" } else { "forward" })];
            ConstCounter::new(*value).encode(e.encode_family(&labels)?)?;
        }
        let mut counts: Vec<(&str, &str, i64)> = vec![
            ("bpfnet_networks", "Networks", self.networks as i64),
            ("bpfnet_services", "Services", self.services as i64),
            ("bpfnet_backends", "Backends of all services", self.backends as i64),
            ("bpfnet_endpoints_attached", "Endpoints attached to a namespace", self.endpoints_attached as i64),
            ("bpfnet_endpoints_allocated", "Endpoints allocated and not attached (a front-end's, between its steps)", self.endpoints_allocated as i64),
        ];
        let mut ratios: Vec<(&str, &str, f64)> = Vec::new();
        if let Some(ct) = &self.conntrack {
            counts.extend([
                ("bpfnet_conntrack_entries", "Entries in the table of established connections (two per connection)", ct.entries as i64),
                ("bpfnet_conntrack_capacity", "Entries the table of established connections holds at most (--ct-max)", ct.max_entries as i64),
                ("bpfnet_conntrack_pending_entries", "Entries in the table of new (not yet established) connections", ct.pending_entries as i64),
                ("bpfnet_conntrack_pending_capacity", "Entries the table of new connections holds at most (a quarter of --ct-max)", ct.pending_max_entries as i64),
            ]);
            ratios.extend([
                (
                    "bpfnet_conntrack_pressure_ratio",
                    "How full the table of established connections is (0 to 1); nothing is evicted from it: when full, new connections stay in the new-connection table, where floods can evict them",
                    ct.pressure_percent / 100.0,
                ),
                (
                    "bpfnet_conntrack_pending_pressure_ratio",
                    "How full the table of new connections is (0 to 1); near 1, each new connection evicts the least recently used new ones (a flood of SYNs or unanswered datagrams)",
                    ct.pending_pressure_percent / 100.0,
                ),
            ]);
        }
        for (name, help, value) in counts {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        for (name, help, value) in ratios {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// What the metrics endpoint reads.
#[derive(Clone)]
pub struct Sources {
    pub published: Published,
    pub counters: Arc<Counters>,
    pub conntrack: Arc<std::sync::Mutex<crate::conntrack::Conntrack>>,
    pub recorder: Recorder,
}

async fn scrape(State(sources): State<Sources>) -> Response {
    let state = sources.published.get();
    let mut snapshot = Snapshot {
        networks: state.networks.len(),
        endpoints_attached: state.endpoints.len(),
        endpoints_allocated: state.allocations.len(),
        services: state.services.len(),
        backends: state.services.values().map(|s| s.backends.len()).sum(),
        ..Default::default()
    };
    match sources.counters.read() {
        Ok(counters) => snapshot.counters = counters.into_iter().map(|(c, v)| (c.name().to_string(), c.is_drop(), v)).collect(),
        Err(e) => log::warn!("metrics: reading the datapath counters: {e:#}"),
    }
    let ct = sources.conntrack.clone();
    snapshot.conntrack = tokio::task::spawn_blocking(move || ct.lock().unwrap_or_else(|e| e.into_inner()).usage()).await.ok();
    let mut registry = Registry::default();
    registry.register("bpfnet_api_request_duration_seconds", "Time to answer API requests and Docker plugin calls", sources.recorder.requests.clone());
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        log::warn!("metrics: encoding: {e}");
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// The metrics port's limits: whoever can reach it (any local user, on a loopback address) holds
/// at most this many connections, each closed when idle or slow, so it can neither exhaust the
/// daemon's file descriptors nor reach the API.
pub const LIMITS: Limits = Limits { max_connections: 32, client_timeout: std::time::Duration::from_secs(5) };

/// Serves `GET /metrics` on `addr` until the task is aborted, within [`LIMITS`].
pub async fn serve(addr: SocketAddr, sources: Sources) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
    let app = Router::new().route("/metrics", get(scrape)).with_state(sources);
    log::info!("metrics on http://{addr}/metrics");
    Ok(tokio::spawn(async move { limits::serve(listener, app, &LIMITS, std::future::pending()).await }))
}
