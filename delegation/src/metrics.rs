//! Prometheus metrics of a node, served at `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by endpoint.
    pub requests: IntCounterVec,
    /// Decisions by kind (`reencrypt`, `grant`, `revoke`), decision and code.
    pub decisions: IntCounterVec,
    /// Capsules re-encrypted.
    pub capsules: IntCounter,
    /// Seconds to decide and re-encrypt one batch, by decision.
    pub batch_seconds: HistogramVec,
    /// Grants held.
    pub grants: IntGauge,
    /// Policy reloads by result.
    pub reloads: IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "cbfs_delegation_requests_total",
                "HTTP requests, by endpoint",
            ),
            &["endpoint"],
        )
        .expect("valid metric");
        let decisions = IntCounterVec::new(
            Opts::new(
                "cbfs_delegation_decisions_total",
                "Decisions, by kind, decision (allow, deny) and refusal code",
            ),
            &["kind", "decision", "code"],
        )
        .expect("valid metric");
        let capsules = IntCounter::new(
            "cbfs_delegation_capsules_reencrypted_total",
            "Capsules re-encrypted",
        )
        .expect("valid metric");
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "cbfs_delegation_batch_seconds",
                "Time to decide and answer one re-encryption request",
            )
            .buckets(vec![
                0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["decision"],
        )
        .expect("valid metric");
        let grants = IntGauge::new("cbfs_delegation_grants", "Grants (kfrags) the node holds")
            .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "cbfs_delegation_policy_reloads_total",
                "Policy reloads, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(decisions.clone()),
            Box::new(capsules.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(grants.clone()),
            Box::new(reloads.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            decisions,
            capsules,
            batch_seconds,
            grants,
            reloads,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.requests.with_label_values(&["reencrypt"]).inc();
        m.decisions
            .with_label_values(&["reencrypt", "deny", "replayed"])
            .inc();
        m.capsules.inc_by(1000);
        m.batch_seconds.with_label_values(&["allow"]).observe(0.2);
        m.grants.set(3);
        m.reloads.with_label_values(&["ok"]).inc();
        let text = m.render();
        for needle in [
            "cbfs_delegation_requests_total{endpoint=\"reencrypt\"} 1",
            "cbfs_delegation_decisions_total{code=\"replayed\",decision=\"deny\",kind=\"reencrypt\"} 1",
            "cbfs_delegation_capsules_reencrypted_total 1000",
            "cbfs_delegation_batch_seconds_count{decision=\"allow\"} 1",
            "cbfs_delegation_grants 3",
            "cbfs_delegation_policy_reloads_total{result=\"ok\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
