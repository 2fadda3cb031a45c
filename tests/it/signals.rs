//! Anomaly detection measured against the simulator's ground truth: the quality bar
//! (precision ≥ 0.9 and recall ≥ 0.9) holds for every injected fault type, and detection is
//! reproducible.

use crate::support;

#[test]
fn anomaly_detection_meets_the_quality_bar_on_injected_faults() {
    // The default stream density (2,000 events/s at 60×: ~6.7 readings per device and
    // simulated minute); eight simulated hours.
    let config = support::config();
    let (cfg, params) = (config.simulate, config.signals.anomaly);
    let report = millstream::eval::anomalies::anomalies(&cfg, &params, 8.0, |_| {});
    assert!(report.faults >= 30, "{report:?}");
    assert!(
        report.precision >= 0.9,
        "precision {}: {report:#?}",
        report.precision
    );
    assert!(
        report.recall >= 0.9,
        "recall {}: {report:#?}",
        report.recall
    );
    for (kind, k) in &report.by_fault {
        assert!(k.injected > 0, "no {kind} faults injected");
        assert!(k.recall >= 0.9, "{kind}: recall {} ({k:?})", k.recall);
    }
    // Same seed, same findings.
    let again = millstream::eval::anomalies::anomalies(&cfg, &params, 8.0, |_| {});
    assert_eq!(
        (again.findings, again.true_positives),
        (report.findings, report.true_positives)
    );
}
