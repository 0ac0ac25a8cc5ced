//! Prometheus metrics: requests by route and status, job durations, bytes
//! in and out, node latency.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests, by route and status.
    pub requests: IntCounterVec,
    /// Job durations, by kind and outcome.
    pub jobs: HistogramVec,
    /// Bytes received and sent, by direction and route.
    pub bytes: IntCounterVec,
    /// Delegation node answer latency, by node.
    pub node_latency: HistogramVec,
    /// Policy decisions, by action and decision.
    pub decisions: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "cbfs_gateway_requests_total",
                "Requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("metric");
        let jobs = HistogramVec::new(
            HistogramOpts::new("cbfs_gateway_job_seconds", "Job durations")
                .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0]),
            &["kind", "state"],
        )
        .expect("metric");
        let bytes = IntCounterVec::new(
            Opts::new(
                "cbfs_gateway_bytes_total",
                "Bytes received (in) and sent (out)",
            ),
            &["direction", "route"],
        )
        .expect("metric");
        let node_latency = HistogramVec::new(
            HistogramOpts::new(
                "cbfs_gateway_node_seconds",
                "Delegation node answer latency",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["node"],
        )
        .expect("metric");
        let decisions = IntCounterVec::new(
            Opts::new("cbfs_gateway_decisions_total", "Policy decisions"),
            &["action", "decision"],
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(jobs.clone()),
            Box::new(bytes.clone()),
            Box::new(node_latency.clone()),
            Box::new(decisions.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            jobs,
            bytes,
            node_latency,
            decisions,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        String::from_utf8(buf).expect("metrics are text")
    }
}
