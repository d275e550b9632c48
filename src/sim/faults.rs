//! Fault injection shared by the simulators: a queue of faults for coming requests and seeded random rates.
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a simulator does to one request instead of (or besides) answering it normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Wait, then handle the request normally (a client timeout turns this into an unknown outcome).
    Delay(Duration),
    /// Apply the request, then close the connection without answering.
    DropAfterCommit,
    /// Close the connection without applying the request.
    Reset,
    /// Answer HTTP 500 without applying the request.
    Http500,
    /// Apply the request, then answer 200 with a body that is not JSON.
    Garbage,
    /// Apply the request, then answer 200 with this JSON body instead of the real answer (a hostile
    /// host: wrong types, undefined codes, another request's answer).
    AnswerWith(&'static str),
    /// Apply the request, then answer its real answer with an `advertisement` of this many bytes (a
    /// hostile host sending bodies far beyond any limit: the client must neither hold nor journal them).
    Huge(usize),
    /// Apply the request, then answer its real answer cut in half (a valid HTTP answer whose JSON ends
    /// in the middle: a proxy or a host that died while writing).
    Truncated,
    /// Apply the request, then hold its real answer this long before sending it (past the client's
    /// timeout: the answer is lost although the host committed).
    LateAnswer(Duration),
}

impl Fault {
    /// Whether the host's real answer reaches the client whole and on time with this fault (for the
    /// simulators' books of what they told).
    pub fn delivers(fault: Option<Fault>) -> bool {
        !matches!(fault, Some(Fault::Truncated | Fault::LateAnswer(_) | Fault::DropAfterCommit | Fault::Garbage | Fault::AnswerWith(_)))
    }
}

struct Queued {
    /// The endpoint it is for (path after the protocol prefix, e.g. `jpos/trans/consumeReversal`), or
    /// `None` for "the next financial request".
    target: Option<String>,
    fault: Fault,
}

struct Random {
    per_mille: u32,
    rng: StdRng,
}

/// The pending faults of one simulator.
#[derive(Default)]
pub struct FaultPlan {
    queue: Mutex<VecDeque<Queued>>,
    random: Mutex<Option<Random>>,
    /// Lost answers of every kind of request (check-in, inquiries, settlement, uploads too), each
    /// applied first: the strictest test of a client that must learn what happened without the answer.
    drops: Mutex<Option<Random>>,
}

impl FaultPlan {
    /// Queue a fault for the next financial request (reversals included).
    pub fn push(&self, fault: Fault) {
        self.lock_queue().push_back(Queued { target: None, fault });
    }

    /// Queue a fault for the next request to one endpoint, financial or not (e.g. `jpos/terminal/checkin`).
    pub fn push_on(&self, endpoint: &str, fault: Fault) {
        self.lock_queue().push_back(Queued { target: Some(endpoint.trim_matches('/').to_string()), fault });
    }

    /// Fault `rate_per_mille` of financial requests at random, reproducibly from `seed`; 0 turns it off.
    pub fn set_random(&self, rate_per_mille: u32, seed: u64) {
        let mut r = self.random.lock().unwrap_or_else(|p| p.into_inner());
        *r = (rate_per_mille > 0).then(|| Random { per_mille: rate_per_mille.min(1000), rng: StdRng::seed_from_u64(seed) });
    }

    /// Apply `rate_per_mille` of ALL requests (check-in, inquiries, financial requests, reversals,
    /// settlement, uploads) and then drop their answers ([`Fault::DropAfterCommit`]), reproducibly
    /// from `seed`; 0 turns it off. Independent of [`FaultPlan::set_random`] and the queue, which are
    /// consulted first.
    pub fn set_random_drops(&self, rate_per_mille: u32, seed: u64) {
        let mut r = self.drops.lock().unwrap_or_else(|p| p.into_inner());
        *r = (rate_per_mille > 0).then(|| Random { per_mille: rate_per_mille.min(1000), rng: StdRng::seed_from_u64(seed) });
    }

    /// Drop every queued fault and stop random ones (lost answers included).
    pub fn clear(&self) {
        self.lock_queue().clear();
        self.set_random(0, 0);
        self.set_random_drops(0, 0);
    }

    /// The fault for this request, if any: a queued one first, then a random draw (financial only),
    /// then a random lost answer (any request).
    pub fn take(&self, endpoint: &str, financial: bool) -> Option<Fault> {
        {
            let mut q = self.lock_queue();
            if let Some(i) = q.iter().position(|f| match &f.target {
                Some(t) => t == endpoint,
                None => financial,
            }) {
                return q.remove(i).map(|f| f.fault);
            }
        }
        if financial {
            if let Some(f) = self.random_fault() {
                return Some(f);
            }
        }
        let mut d = self.drops.lock().unwrap_or_else(|p| p.into_inner());
        let d = d.as_mut()?;
        (d.rng.gen_range(0..1000) < d.per_mille).then_some(Fault::DropAfterCommit)
    }

    fn random_fault(&self) -> Option<Fault> {
        let mut r = self.random.lock().unwrap_or_else(|p| p.into_inner());
        let r = r.as_mut()?;
        if r.rng.gen_range(0..1000) >= r.per_mille {
            return None;
        }
        Some(match r.rng.gen_range(0..5) {
            0 => Fault::Delay(Duration::from_millis(r.rng.gen_range(5..200))),
            1 => Fault::DropAfterCommit,
            2 => Fault::Reset,
            3 => Fault::Http500,
            _ => Fault::Garbage,
        })
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_faults_go_to_their_target_and_random_ones_repeat_with_the_seed() {
        let p = FaultPlan::default();
        p.push_on("jpos/terminal/checkin", Fault::Reset);
        p.push(Fault::Http500);
        assert_eq!(p.take("jpos/cards", false), None);
        assert_eq!(p.take("jpos/trans/consume", true), Some(Fault::Http500));
        assert_eq!(p.take("jpos/terminal/checkin", false), Some(Fault::Reset));
        assert_eq!(p.take("jpos/trans/consume", true), None);
        let draw = |seed| {
            p.set_random(300, seed);
            (0..100).map(|_| p.take("jpos/trans/consume", true)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        let n = a.iter().filter(|f| f.is_some()).count();
        assert!((10..60).contains(&n), "{n}");
        p.set_random(1000, 1);
        assert_eq!(p.take("jpos/cards", false), None);
    }

    #[test]
    fn random_drops_hit_every_kind_of_request_at_their_rate_and_repeat_with_the_seed() {
        let p = FaultPlan::default();
        let draw = |endpoint: &str, financial: bool, seed| {
            p.set_random_drops(150, seed);
            (0..2000).map(|_| p.take(endpoint, financial)).collect::<Vec<_>>()
        };
        for (endpoint, financial) in
            [("jpos/terminal/checkin", false), ("jpos/trans/consume", true), ("jpos/trans/consumeReversal", true), ("jpos/trans/settle", false)]
        {
            let a = draw(endpoint, financial, 9);
            assert_eq!(a, draw(endpoint, financial, 9));
            assert!(a.iter().all(|f| matches!(f, None | Some(Fault::DropAfterCommit))));
            let n = a.iter().filter(|f| f.is_some()).count();
            assert!((200..400).contains(&n), "{endpoint}: {n} of 2000 dropped at 15 %");
        }
        // Queued faults still come first; clear stops the drops.
        p.push_on("jpos/trans/settle", Fault::Http500);
        assert_eq!(p.take("jpos/trans/settle", false), Some(Fault::Http500));
        p.clear();
        assert!((0..100).all(|_| p.take("jpos/terminal/checkin", false).is_none()));
    }
}
