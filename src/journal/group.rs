//! Group commit without a sync thread: the first writer that asks for a sync while none runs leads the
//! group (one `fdatasync` of the log for every entry appended so far), the others wait for it.
//!
//! Before, a dedicated sync thread did the fdatasync: every durable point cost two extra thread
//! hand-offs (writer → sync thread, sync thread → writer's task), each a futex wake-up of a sleeping
//! thread, which on a loaded 2-core machine is tens to hundreds of µs. Here the writer already on a
//! blocking thread (see `Engine::journal_begin_durable`) syncs inline when it is first; a writer that
//! arrives while a group is being synced waits for it and, if its entry came too late for that group,
//! leads the next one. The rule is unchanged: ONE fdatasync per group, and every waiter's entry was
//! appended before the fdatasync that releases it started.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::guard::{mark_loop, snapshot, Guard, MarkSlot};
use super::space::Space;
use super::write::Writer;
use super::JournalError;

/// What the group commit shares between writers.
pub(super) struct Committer {
    writer: Arc<Mutex<Writer>>,
    space: Arc<Space>,
    state: Mutex<GroupState>,
    done: Condvar,
    /// Groups synced (fdatasyncs of the log, roll-overs aside): `/v1/status` `journal.syncs`.
    pub(super) count: AtomicU64,
    /// The high-water mark's trees and thread, once the journal started it (`SledJournal::open`).
    marker: std::sync::OnceLock<Marker>,
}

struct Marker {
    stores: Arc<super::sled_store::StoreSlot>,
    slot: Arc<MarkSlot>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct GroupState {
    /// Sync requests handed out (each writer takes the next number).
    requested: u64,
    /// Every request up to this number has its answer: durable, or in one of `failed`.
    synced: u64,
    /// A writer is syncing a group now.
    leading: bool,
    /// Groups whose fdatasync failed and whose writers have not all read it yet: their requests
    /// `(from, to]`, how many of them are still to read it, the error. Kept per group because a later
    /// group may succeed before a writer of the failed one wakes up: that success says nothing about
    /// the failed group's entries (after a failed fdatasync the kernel may drop their dirty pages), so
    /// each writer reads the outcome of the group its own request was in.
    failed: Vec<FailedGroup>,
}

struct FailedGroup {
    from: u64,
    to: u64,
    unread: u64,
    error: String,
}

impl GroupState {
    /// Record the outcome of the group that synced the requests `(from, to]`.
    fn finish(&mut self, from: u64, to: u64, result: Result<(), String>) {
        self.synced = to;
        self.leading = false;
        if let Err(error) = result {
            self.failed.push(FailedGroup { from, to, unread: to - from, error });
        }
    }

    /// Request `mine`'s answer once its group has synced (`None` before); each request reads it once.
    fn answer(&mut self, mine: u64) -> Option<Result<(), String>> {
        if self.synced < mine {
            return None;
        }
        let Some(i) = self.failed.iter().position(|g| g.from < mine && mine <= g.to) else { return Some(Ok(())) };
        let g = &mut self.failed[i];
        g.unread -= 1;
        let error = if g.unread == 0 { self.failed.swap_remove(i).error } else { g.error.clone() };
        Some(Err(error))
    }
}

impl Committer {
    pub(super) fn new(writer: Arc<Mutex<Writer>>, space: Arc<Space>) -> Committer {
        Committer {
            writer,
            space,
            state: Mutex::new(GroupState::default()),
            done: Condvar::new(),
            count: AtomicU64::new(0),
            marker: std::sync::OnceLock::new(),
        }
    }

    /// Start the high-water mark's thread: from now on each group's values go to the mark after its sync.
    pub(super) fn start_mark(&self, guard: Guard) -> Result<(), JournalError> {
        let slot = Arc::new(MarkSlot::default());
        let for_thread = slot.clone();
        let mark = guard.mark;
        let handle = std::thread::Builder::new()
            .name("journal-mark".into())
            .spawn(move || mark_loop(mark, for_thread))
            .map_err(|e| JournalError::Store(format!("journal mark thread: {e}")))?;
        let m = Marker { stores: guard.stores, slot, thread: Mutex::new(Some(handle)) };
        self.marker.set(m).map_err(|_| JournalError::Store("journal mark started twice".into()))
    }

    /// Stop the mark thread after it wrote the newest values it holds (a clean stop).
    pub(super) fn stop_mark(&self) {
        let Some(m) = self.marker.get() else { return };
        if let Ok(mut st) = m.slot.state.lock() {
            st.stop = true;
        }
        m.slot.wake.notify_one();
        if let Some(t) = m.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }

    /// Make every entry appended before this call durable; blocks (call it off the async runtime).
    pub(super) fn sync_blocking(&self) -> Result<(), JournalError> {
        let poisoned = || JournalError::Sync("sync state poisoned".into());
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        st.requested += 1;
        let mine = st.requested;
        loop {
            if let Some(answer) = st.answer(mine) {
                return answer.map_err(JournalError::Sync);
            }
            if st.leading {
                st = self.done.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            // Lead: every request handed out so far was made after its entry was appended, so the
            // fdatasync below covers them all.
            st.leading = true;
            let (from, target) = (st.synced, st.requested);
            drop(st);
            let result = self.sync_group(target - from);
            st = self.state.lock().map_err(|_| poisoned())?;
            st.finish(from, target, result);
            self.count.fetch_add(1, Ordering::Relaxed);
            self.done.notify_all();
        }
    }

    /// One group: the mark's values read, the log fdatasynced, the values handed to the mark thread.
    fn sync_group(&self, size: u64) -> Result<(), String> {
        // Read the mark's values before the sync: everything read here was committed, so the sync
        // below makes it durable, and the mark written after it never runs ahead of the journal.
        let snap = self.marker.get().map(|m| super::sled_store::stores_of(&m.stores).and_then(|s| snapshot(&s.records, &s.profiles)));
        // One fdatasync of the log's segment (two after a roll-over) makes the whole group durable.
        let files = self.writer.lock().map(|mut w| w.log.to_sync()).map_err(|_| "journal writer poisoned".to_string());
        crate::testhook::point_blocking(crate::testhook::BEFORE_LOG_SYNC);
        // metrics: one group of `size` sync requests made durable by the fdatasync below.
        let mut result = crate::metrics::time_group_commit(size, || {
            files.and_then(|files| {
                files
                    .iter()
                    .try_for_each(|f| crate::testhook::fail(crate::testhook::LOG_SYNC).and_then(|()| f.sync_data()))
                    .map_err(|e| log_broken(&format!("fdatasync of the journal log: {e}")))
            })
        });
        let mark_err = self.marker.get().and_then(|m| m.slot.state.lock().ok().and_then(|mut st| st.error.take()));
        if let (Ok(()), Some(e)) = (&result, mark_err) {
            result = Err(format!("the journal's high-water mark could not be written: {e}"));
        }
        match &result {
            Ok(()) => self.space.succeeded(),
            Err(e) => self.space.failed(e),
        }
        // The mark thread writes the newest durable values on its own time.
        if let (true, Some(m), Some(snap)) = (result.is_ok(), self.marker.get(), snap) {
            match snap {
                Ok(values) => {
                    if let Ok(mut st) = m.slot.state.lock() {
                        st.latest = Some(values);
                    }
                    m.slot.wake.notify_one();
                }
                Err(e) => tracing::error!("journal high-water mark: {e}"),
            }
        }
        result
    }
}

/// The log's fdatasync failed. After a failed fdatasync the kernel may have dropped the pages it could
/// not write while later ones still reach the disk: a log with a hole, which the next start refuses
/// as damage inside the journal (or, had it gone on, a replay that stops short of entries answered
/// since). So no later group may be answered: say so and exit with `EXIT_STORE_BROKEN`; the service
/// manager starts posgate again and the log replays what the disk holds, the failed group at its tail.
/// The writers of the failed group get no answer (their requests' outcome is unknown: resent with their
/// key after the restart, they find their record or none). `POSGATE_JOURNAL_NO_EXIT` (tests) returns
/// the error to them instead.
fn log_broken(e: &str) -> String {
    super::sled_store::exit_broken(&format!(
        "journal log failed ({e}): no later change can be made durable behind it; exiting so the service manager restarts posgate and the journal log replays"
    ));
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::GroupState;

    /// Regression: a writer of a group whose fdatasync failed was told "durable" when a later group
    /// succeeded before it woke up (the state kept only the last group's error).
    #[test]
    fn a_failed_sync_is_not_overwritten_by_a_later_groups_success() {
        // Requests 1 and 2 wait for the group that syncs them; it fails.
        let mut st = GroupState { requested: 2, leading: true, ..GroupState::default() };
        st.finish(0, 2, Err("fdatasync of the journal log: EIO".into()));
        // Request 2 (the leader) reads its answer; request 1 has not woken up yet.
        assert_eq!(st.answer(2), Some(Err("fdatasync of the journal log: EIO".into())));
        // Request 3 leads the next group, which succeeds.
        st.requested = 3;
        st.leading = true;
        st.finish(2, 3, Ok(()));
        assert_eq!(st.answer(3), Some(Ok(())));
        // Request 1 wakes up now: its entry was in the failed group.
        assert_eq!(st.answer(1), Some(Err("fdatasync of the journal log: EIO".into())));
        // Every writer of the failed group has read it: nothing is kept.
        assert!(st.failed.is_empty());
        // A request not yet synced has no answer.
        st.requested = 4;
        assert_eq!(st.answer(4), None);
    }
}
