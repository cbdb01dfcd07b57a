//! The JSON of `verify`'s verdict (`verify --json`): written, never read.

use probes_common::OpenStats;
use serde::Serialize;
use serde_with::serde_as;

use super::{kernel::OpenStatsJson, snapshot::CountersJson};
use crate::model::{
    snapshot::Counters,
    verdict::{Decision, Evidence, SeriesGain, Verdict, Why},
};

#[derive(Serialize)]
#[serde(remote = "Verdict", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerdictJson {
    Active,
    NotActive,
    Inconclusive,
}

#[derive(Serialize)]
#[serde(remote = "Why", rename_all = "snake_case")]
pub enum WhyJson {
    SharedLockTaken,
    ExclusiveLockTaken,
    FlagStripped,
    NoPassthroughWrites,
    FlagNotRequested,
    NoEligibleWrites,
    CountsIncomplete,
}

#[serde_as]
#[derive(Serialize)]
#[serde(remote = "Decision")]
pub struct DecisionJson {
    #[serde_as(as = "VerdictJson")]
    verdict: Verdict,
    #[serde_as(as = "WhyJson")]
    why: Why,
    message: String,
    hint: Option<String>,
    shared_extended: u64,
    eof_rechecks: u64,
    unseen_upgrades: u64,
}

#[serde_as]
#[derive(Serialize)]
#[serde(remote = "Evidence")]
pub struct EvidenceJson {
    #[serde_as(as = "CountersJson")]
    passthrough: Counters,
    #[serde_as(as = "OpenStatsJson")]
    opens: OpenStats,
    recursion_misses: u64,
    waits_measured: bool,
}

#[derive(Serialize)]
#[serde(remote = "SeriesGain")]
pub struct SeriesGainJson {
    overwrites_exclusive: u64,
    wait_share: Option<f64>,
}

/// A form that only writes never builds its model type, so serde does not
/// notice a model field the form lacks; these patterns name every field,
/// and fail to compile then.
fn _every_field_is_written(decision: &Decision, evidence: &Evidence, gain: &SeriesGain) {
    let Decision {
        verdict: _,
        why: _,
        message: _,
        hint: _,
        shared_extended: _,
        eof_rechecks: _,
        unseen_upgrades: _,
    } = decision;
    let Evidence {
        passthrough: _,
        opens: _,
        recursion_misses: _,
        waits_measured: _,
    } = evidence;
    let SeriesGain {
        overwrites_exclusive: _,
        wait_share: _,
    } = gain;
}

super::via_remote!(serialize
    VerdictJson => Verdict,
    WhyJson => Why,
    DecisionJson => Decision,
    EvidenceJson => Evidence,
    SeriesGainJson => SeriesGain,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::json::tests::to_json;

    #[test]
    fn the_verdict_writes_the_documented_names() {
        let decision = Decision {
            verdict: Verdict::NotActive,
            why: Why::ExclusiveLockTaken,
            message: "m".into(),
            hint: None,
            shared_extended: 0,
            eof_rechecks: 0,
            unseen_upgrades: 0,
        };
        assert_eq!(
            to_json::<DecisionJson, _>(&decision),
            r#"{"verdict":"NOT_ACTIVE","why":"exclusive_lock_taken","message":"m","hint":null,"shared_extended":0,"eof_rechecks":0,"unseen_upgrades":0}"#
        );
        let gain = SeriesGain {
            overwrites_exclusive: 3,
            wait_share: Some(0.5),
        };
        assert_eq!(
            to_json::<SeriesGainJson, _>(&gain),
            r#"{"overwrites_exclusive":3,"wait_share":0.5}"#
        );
        let evidence = to_json::<EvidenceJson, _>(&Evidence::default());
        assert!(
            evidence.starts_with(r#"{"passthrough":{"writes":0,"#),
            "{evidence}"
        );
        assert!(
            evidence.ends_with(
                r#""last_flags_kept":"0x0"},"recursion_misses":0,"waits_measured":false}"#
            ),
            "{evidence}"
        );
    }
}
