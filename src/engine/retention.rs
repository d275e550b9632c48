//! Retention in the engine: move old settled batches to day files at start-up and daily, and read them back.
//!
//! The move: the journal names the batches that may leave (`JournalStore::plan_retention`), their
//! records are written to their day files (synced, renamed), and only then removed from the journal as
//! one change (`archive_batches`). A crash between the two (`testhook::IN_RETENTION`) leaves the
//! records in both places: readers take each id once (the hot copy first) and the next run moves them
//! again, the day file merging by id.
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::journal::archive::{day_of, ArchiveError};

/// Records planned per round of a run (bounds the memory a run holds).
const ROUND_RECORDS: usize = 20_000;
/// Between two runs of the daily task.
const DAY_MS: i64 = 86_400_000;
/// The most records one export page carries.
pub const EXPORT_PAGE_MAX: usize = 5_000;

fn aerr(e: ArchiveError) -> EngineError {
    EngineError::Journal(e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, EngineError> + Send + 'static) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Journal(format!("retention task: {e}")))?
}

impl Engine {
    /// Run retention now and then once a day until the engine stops (`retain_days` from `[journal]`).
    pub fn start_retention(self: &Arc<Self>, retain_days: u32) {
        let engine = Arc::downgrade(self);
        let stop = self.stop.subscribe();
        tokio::spawn(daily(engine, retain_days, stop));
    }

    /// Move every settled batch whose settlement is more than `retain_days` old to the day files.
    /// Returns how many records left the hot journal.
    pub async fn run_retention(&self, retain_days: u32) -> Result<usize, EngineError> {
        let now = self.clock.now_ms();
        let cutoff_ms = now.saturating_sub(i64::from(retain_days) * DAY_MS);
        let cutoff = chrono::DateTime::from_timestamp_millis(cutoff_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .ok_or_else(|| EngineError::Journal(format!("retention cut-off {cutoff_ms} ms is out of range")))?;
        let mut total = 0usize;
        loop {
            let j = self.journal.clone();
            let c = cutoff.clone();
            let plan = blocking(move || j.plan_retention(&c, ROUND_RECORDS).map_err(jerr)).await?;
            if plan.is_empty() {
                break;
            }
            let mut days: BTreeMap<String, Vec<Record>> = BTreeMap::new();
            for b in &plan {
                for r in &b.records {
                    // The plan holds only records with a creation day.
                    let day = day_of(r).unwrap_or("0000-00-00").to_string();
                    days.entry(day).or_default().push(r.clone());
                }
            }
            let archive = self.archive.clone();
            blocking(move || {
                for (day, recs) in &days {
                    archive.write_day(day, recs).map_err(aerr)?;
                }
                Ok(())
            })
            .await?;
            // The day files are durable; the journal still holds every record of them.
            testhook::point(testhook::IN_RETENTION).await;
            let j = self.journal.clone();
            let moved = blocking(move || j.archive_batches(&plan).map_err(jerr)).await?;
            self.journal.sync().await.map_err(jerr)?;
            tracing::info!(records = moved, cutoff = %cutoff, archive = %self.archive.dir().display(), "retention: settled batches moved to the day files");
            total += moved;
            if moved == 0 {
                break; // every planned batch changed meanwhile: the next run takes them
            }
        }
        Ok(total)
    }

    /// One record by id, from the hot journal or else the day files.
    pub(super) fn record_anywhere(&self, id: u64) -> Result<Option<Record>, EngineError> {
        match self.journal.get(id).map_err(jerr)? {
            Some(r) => Ok(Some(r)),
            None => self.archive.find(id).map_err(aerr),
        }
    }

    /// `GET /v1/journal`: the hot journal's records, and with a `date` also that day's archived ones.
    pub(super) fn list_anywhere(&self, q: &JournalQuery) -> Result<Vec<Record>, EngineError> {
        let mut out = self.journal.list(q).map_err(jerr)?;
        let Some(day) = q.date.as_deref().filter(|d| crate::journal::archive::valid_day(d)) else { return Ok(out) };
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        let hot: std::collections::HashSet<u64> = out.iter().map(|r| r.id).collect();
        out.extend(self.archive.read_day(day).map_err(aerr)?.into_iter().filter(|r| !hot.contains(&r.id) && q.admits(r)));
        out.sort_by_key(|r| std::cmp::Reverse(r.id));
        out.truncate(limit);
        Ok(out)
    }

    /// One page of an export: records created from day `from` to `to` with an id above `after`, hot
    /// and archived, each once (the hot copy when both hold it), ordered by id, at most `limit`.
    pub async fn export_page(&self, from: &str, to: &str, after: u64, limit: usize) -> Result<Vec<Value>, EngineError> {
        for (name, d) in [("from", from), ("to", to)] {
            if !crate::journal::archive::valid_day(d) {
                return Err(EngineError::BadRequest(format!("{name} must be a date YYYY-MM-DD, not {d:?}")));
            }
        }
        if from > to {
            return Ok(Vec::new()); // an empty range
        }
        let limit = limit.clamp(1, EXPORT_PAGE_MAX);
        let (j, archive, f, t) = (self.journal.clone(), self.archive.clone(), from.to_string(), to.to_string());
        blocking(move || {
            let mut all: BTreeMap<u64, Record> = archive.range_after(&f, &t, after).map_err(aerr)?.into_iter().map(|r| (r.id, r)).collect();
            for r in j.records_after(after, &f, &t, limit).map_err(jerr)? {
                all.insert(r.id, r);
            }
            Ok(all.into_values().take(limit).map(|r| r.view()).collect())
        })
        .await
    }
}

async fn daily(engine: Weak<Engine>, retain_days: u32, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        match e.run_retention(retain_days).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "retention run done"),
            Err(err) => tracing::error!("retention: {err}"),
        }
        drop(e);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(DAY_MS as u64)) => {}
            _ = stop.changed() => return,
        }
    }
}
