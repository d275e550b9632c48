//! The one outcome rule: what an exchange with the backend makes of a journal record (its status, its
//! recovery entry, whether its batch totals apply), wherever the exchange happened.
//!
//! It was written four times (first send, settlement send, recovery attempt, start-up adoption) and the
//! copies drifted: a settlement resend that failed before leaving the host marked the record failed and
//! reopened a batch the host may already have settled. Every caller now asks [`apply`], and only then
//! does its own bookkeeping (profile state, owed mirror, leases) from the record this leaves.
use crate::backend::{BackendError, OpClass, OpSpec, Recovery, Reply, Stage, Verdict};
use crate::model::{Class, Record, RecoveryState, Status};

/// What happened in one exchange, as the caller saw it.
#[derive(Debug)]
pub(super) enum Outcome<'a> {
    /// A definite answer (a first send, a resend, or a query that found the original).
    Answer(&'a Reply),
    /// Recovery undid it, or found it never happened.
    Reversed { code: String, message: String },
    /// The backend call failed; its stage says whether anything may have happened.
    Error(&'a BackendError),
    /// A recovery attempt that resolved nothing (the backend said "not yet").
    NotYet(String),
    /// The daemon stopped between journaling the request and journaling its outcome.
    Interrupted,
    /// A person looked at the host and said what became of it (`posgate recovery resolve`).
    ByHand { approved: bool, note: String },
}

/// The recovery settings the rule needs (the profile's `[recovery]`) and the clock's now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub now_ms: i64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub max_attempts: u32,
}

/// How an unknown outcome of a record is recovered, or `None` when nothing is owed for it: a
/// settlement is resent; a financial request follows its operation's policy, and one whose operation
/// this build no longer knows goes to a person.
pub(super) fn policy(class: Class, spec: Option<OpSpec>) -> Option<Recovery> {
    match class {
        Class::Settle => Some(Recovery::Resend),
        Class::Financial => match spec.map(|s| s.class) {
            Some(OpClass::Financial(how)) => Some(how),
            _ => Some(Recovery::Manual),
        },
        Class::SignOn | Class::Inquiry | Class::Report | Class::Job | Class::Notification => None,
    }
}

/// Apply `outcome` to `rec` (journaled, not yet changed by the caller). Returns whether the record's
/// batch totals are to be applied with this commit.
///
/// The rules, in one place:
/// - An answer is believed: approved or declined, and nothing is owed. A settlement answered is
///   approved (balanced or not: the caller records which). Totals apply to an approved financial record.
/// - A reversal ends it `reversed`; nothing is owed and no totals apply.
/// - While recovery is owed, an exchange that resolves nothing (an error of any stage, "not yet") is one
///   more failed attempt: the record stays `unknown`, the next attempt backs off, and after
///   `max_attempts` it is parked for a person. A resend that did not leave the host says nothing about
///   the first send, so it never turns an owed record into a failed one.
/// - On a first send, an error whose outcome is unknown (or an interrupted run) makes recovery owed when
///   the record's class has a policy, else the record failed; `not sent` and `rejected` fail it.
pub(super) fn apply(rec: &mut Record, how: Option<Recovery>, outcome: Outcome<'_>, t: &Timing) -> bool {
    let owed = rec.status == Status::Unknown && rec.recovery.is_some();
    match outcome {
        Outcome::Answer(reply) => {
            rec.status = match (rec.class, &reply.verdict) {
                (Class::Settle, _) | (_, Verdict::Approved) => Status::Approved,
                (_, Verdict::Declined) => Status::Declined,
            };
            rec.code = Some(reply.code.clone());
            rec.message = Some(reply.message.clone());
            rec.message_en = Some(reply.message_en.clone());
            rec.result = reply.fields.clone();
            rec.reference = reply.reference.clone();
            rec.trans_time = reply.trans_time.clone();
            if let Some(a) = reply.amount_fen {
                rec.amount_fen = a;
            }
            rec.recovery = None;
            rec.error = None;
            rec.class == Class::Financial && rec.status == Status::Approved
        }
        Outcome::Reversed { code, message } => {
            rec.status = Status::Reversed;
            rec.recovery = None;
            rec.code = Some(code);
            rec.message = Some(message);
            false
        }
        Outcome::ByHand { approved, note } => {
            rec.status = if approved { Status::Approved } else { Status::Reversed };
            rec.recovery = None;
            rec.message = Some(note);
            approved && rec.class == Class::Financial
        }
        Outcome::NotYet(why) => {
            if owed {
                another_attempt(rec, why, t);
            }
            false
        }
        Outcome::Error(e) if owed => {
            another_attempt(rec, e.to_string(), t);
            false
        }
        Outcome::Error(e) => {
            rec.error = Some(e.to_string());
            match (e.stage, how) {
                (Stage::Unknown, Some(how)) => owe(rec, how, t.now_ms + t.backoff_initial_ms as i64, e.to_string()),
                _ => {
                    rec.status = Status::Failed;
                    rec.recovery = None;
                }
            }
            false
        }
        Outcome::Interrupted => {
            match how {
                Some(how) => owe(rec, how, t.now_ms, "the daemon stopped before the outcome was journaled".into()),
                None => {
                    rec.status = Status::Failed;
                    rec.recovery = None;
                    rec.error = Some("the daemon stopped before the answer; nothing is owed".into());
                }
            }
            false
        }
    }
}

fn owe(rec: &mut Record, how: Recovery, next_at_ms: i64, why: String) {
    rec.status = Status::Unknown;
    rec.recovery = Some(RecoveryState { how, attempts: 0, next_at_ms, parked: how == Recovery::Manual, last_error: Some(why) });
}

fn another_attempt(rec: &mut Record, why: String, t: &Timing) {
    let Some(state) = rec.recovery.as_mut() else { return };
    state.attempts += 1;
    state.last_error = Some(why);
    state.next_at_ms = t.now_ms + backoff_ms(t.backoff_initial_ms, t.backoff_max_ms, state.attempts);
    if state.attempts >= t.max_attempts {
        state.parked = true;
    }
}

/// Backoff before attempt `attempts + 1`: initial × 2^attempts, capped, with jitter in [½, 1].
pub(super) fn backoff_ms(initial: u64, max: u64, attempts: u32) -> i64 {
    use rand::Rng;
    let base = initial.saturating_mul(1u64 << attempts.min(30)).min(max).max(1);
    rand::thread_rng().gen_range(base / 2..=base) as i64
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    const T: Timing = Timing { now_ms: 1_000, backoff_initial_ms: 100, backoff_max_ms: 10_000, max_attempts: 3 };

    fn rec(class: Class) -> Record {
        let mut r = Record::new("p", "consume", class, "000001", "2026-01-01T00:00:00.000Z");
        r.totals = vec![("debitCount".into(), 1)];
        r
    }
    fn reply(verdict: Verdict) -> Reply {
        Reply {
            verdict,
            code: "00".into(),
            message: "ok".into(),
            message_en: "ok".into(),
            fields: Map::new(),
            reference: None,
            trans_time: None,
            amount_fen: None,
        }
    }
    fn err(stage: Stage) -> BackendError {
        BackendError::new("test", stage, "boom")
    }

    #[test]
    fn an_answer_is_believed_and_totals_apply_only_to_an_approved_financial_record() {
        let mut r = rec(Class::Financial);
        assert!(apply(&mut r, Some(Recovery::Reverse), Outcome::Answer(&reply(Verdict::Approved)), &T));
        assert_eq!(r.status, Status::Approved);
        let mut r = rec(Class::Financial);
        assert!(!apply(&mut r, Some(Recovery::Reverse), Outcome::Answer(&reply(Verdict::Declined)), &T));
        assert_eq!(r.status, Status::Declined);
        let mut r = rec(Class::Inquiry);
        assert!(!apply(&mut r, None, Outcome::Answer(&reply(Verdict::Approved)), &T));
        // A settlement answered is settled, balanced or not.
        let mut r = rec(Class::Settle);
        assert!(!apply(&mut r, Some(Recovery::Resend), Outcome::Answer(&reply(Verdict::Declined)), &T));
        assert_eq!(r.status, Status::Approved);
    }

    #[test]
    fn unknown_on_first_send_owes_recovery_by_policy_and_other_stages_fail() {
        let mut r = rec(Class::Financial);
        apply(&mut r, Some(Recovery::Reverse), Outcome::Error(&err(Stage::Unknown)), &T);
        assert_eq!(r.status, Status::Unknown);
        let st = r.recovery.clone().expect("owed");
        assert_eq!((st.how, st.attempts, st.next_at_ms, st.parked), (Recovery::Reverse, 0, 1_100, false));
        let mut r = rec(Class::Financial);
        apply(&mut r, Some(Recovery::Manual), Outcome::Error(&err(Stage::Unknown)), &T);
        assert!(r.recovery.expect("owed").parked, "manual recovery parks at once");
        for stage in [Stage::NotSent, Stage::Rejected, Stage::SignOnFirst] {
            let mut r = rec(Class::Financial);
            apply(&mut r, Some(Recovery::Reverse), Outcome::Error(&err(stage)), &T);
            assert_eq!((r.status, r.recovery.is_none()), (Status::Failed, true), "{stage:?}");
        }
        let mut r = rec(Class::Inquiry);
        apply(&mut r, None, Outcome::Error(&err(Stage::Unknown)), &T);
        assert_eq!(r.status, Status::Failed, "an inquiry owes nothing");
    }

    #[test]
    fn settlement_resend_not_sent_stays_owed_and_is_never_failed() {
        // The regression: a settlement whose answer was lost, then a resend that never left the host,
        // was marked failed (and its batch reopened) although the host may have settled the batch.
        let mut r = rec(Class::Settle);
        apply(&mut r, policy(Class::Settle, None), Outcome::Error(&err(Stage::Unknown)), &T);
        assert_eq!(r.status, Status::Unknown);
        for stage in [Stage::NotSent, Stage::Rejected, Stage::Unknown] {
            apply(&mut r, policy(Class::Settle, None), Outcome::Error(&err(stage)), &T);
            assert_eq!(r.status, Status::Unknown, "{stage:?}");
        }
        let st = r.recovery.expect("still owed");
        assert_eq!(st.attempts, 3);
        assert!(st.parked, "parked after max_attempts for a person");
    }

    #[test]
    fn a_recovery_that_resolves_nothing_backs_off_then_parks() {
        let mut r = rec(Class::Financial);
        apply(&mut r, Some(Recovery::Reverse), Outcome::Error(&err(Stage::Unknown)), &T);
        apply(&mut r, Some(Recovery::Reverse), Outcome::NotYet("later".into()), &T);
        let st = r.recovery.clone().expect("owed");
        assert_eq!((st.attempts, st.parked, st.last_error.as_deref()), (1, false, Some("later")));
        assert!(st.next_at_ms > T.now_ms);
        apply(&mut r, Some(Recovery::Reverse), Outcome::Reversed { code: "00".into(), message: "reversed".into() }, &T);
        assert_eq!((r.status, r.recovery.is_none()), (Status::Reversed, true));
        // Found approved by a resend or query: totals apply now.
        let mut r = rec(Class::Financial);
        apply(&mut r, Some(Recovery::Query), Outcome::Error(&err(Stage::Unknown)), &T);
        assert!(apply(&mut r, Some(Recovery::Query), Outcome::Answer(&reply(Verdict::Approved)), &T));
    }

    #[test]
    fn a_person_resolving_by_hand_applies_totals_only_to_an_approved_financial_record() {
        let mut r = rec(Class::Financial);
        apply(&mut r, Some(Recovery::Manual), Outcome::Error(&err(Stage::Unknown)), &T);
        assert!(apply(&mut r, None, Outcome::ByHand { approved: true, note: "host says paid".into() }, &T));
        assert_eq!((r.status, r.recovery.is_none()), (Status::Approved, true));
        let mut r = rec(Class::Settle);
        apply(&mut r, Some(Recovery::Resend), Outcome::Error(&err(Stage::Unknown)), &T);
        assert!(!apply(&mut r, None, Outcome::ByHand { approved: true, note: String::new() }, &T));
    }

    #[test]
    fn an_interrupted_run_owes_recovery_only_where_a_policy_exists() {
        let mut r = rec(Class::Financial);
        apply(&mut r, policy(Class::Financial, None), Outcome::Interrupted, &T);
        assert!(r.recovery.as_ref().is_some_and(|s| s.how == Recovery::Manual && s.parked), "an operation this build does not know goes to a person");
        let mut r = rec(Class::Settle);
        apply(&mut r, policy(Class::Settle, None), Outcome::Interrupted, &T);
        assert_eq!((r.status, r.recovery.as_ref().map(|s| s.next_at_ms)), (Status::Unknown, Some(T.now_ms)));
        for c in [Class::SignOn, Class::Inquiry, Class::Report] {
            let mut r = rec(c);
            apply(&mut r, policy(c, None), Outcome::Interrupted, &T);
            assert_eq!(r.status, Status::Failed, "{c:?}");
        }
    }
}
