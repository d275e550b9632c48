//! sled's configuration and the memory bound of its page cache, the daemon's largest resident cost.
//!
//! sled keeps every page it has read or written in memory until the pages it holds add up to
//! `cache_capacity`, counted at their on-disk size; in memory a page takes two to three times that. The
//! journal only grows (retention moves records to the day files after days), so the cache fills at the
//! rate records are written: under 32 lanes the daemon's RSS grew ~2.5 MB a minute until the cache was
//! full (issue 12), at 32 MiB that was ~100 MiB above the start. The hot set (open batches, owed
//! recovery, the newest records, the indexes' right edges) is small: 8 MiB holds it many times over and
//! older records are read through the OS page cache.
use std::path::Path;

/// sled's page cache, counted at on-disk size (sled's default is 1 GiB).
pub(super) const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// The sled configuration of the journal store. No background flusher: the log is the durable record,
/// sled is flushed by checkpoints. `POSGATE_SLED_CACHE_KIB` overrides the cache size, for measurements
/// only: the load test restarts the daemon with a tiny cache to see what the journal itself costs
/// resident (sled's page table and log positions, which no cache size bounds).
pub(super) fn config(dir: &Path) -> sled::Config {
    let cache = std::env::var("POSGATE_SLED_CACHE_KIB").ok().and_then(|v| v.parse::<u64>().ok()).map_or(CACHE_BYTES, |k| k * 1024);
    sled::Config::new().path(dir).mode(sled::Mode::LowSpace).flush_every_ms(None).cache_capacity(cache)
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    /// This process's resident set in KiB (nextest runs each test in its own process).
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
    }

    /// Regression (issue 12): the RSS grew with the journal until sled's 32 MiB cache was full, ~45 to
    /// 55 MiB above the start here (debug and release builds), ~70 MiB more in the daemon under 32 lanes.
    /// Writes 80,000 record-sized values into two trees the way the journal lays them out (ascending ids,
    /// a time index), ~50 MiB on disk, more than either cache holds, and bounds the growth at 32 MiB (the
    /// 8 MiB cache: ~20 to 25 MiB).
    #[test]
    #[cfg(target_os = "linux")]
    fn sled_cache_growing_with_the_journal_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::config(dir.path()).open().unwrap();
        let records = db.open_tree("records").unwrap();
        let by_time = db.open_tree("by_time").unwrap();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(12);
        let mut value = vec![0u8; 600];
        let mut write = |id: u64| {
            rng.fill_bytes(&mut value);
            records.insert(id.to_be_bytes(), value.as_slice()).unwrap();
            by_time.insert([&value[..8], &id.to_be_bytes()[..]].concat(), &[][..]).unwrap();
        };
        write(0);
        db.flush().unwrap();
        let before = rss_kib();
        for id in 1u64..80_000 {
            write(id);
            if id % 10_000 == 0 {
                db.flush().unwrap();
            }
        }
        db.flush().unwrap();
        let grown = rss_kib().saturating_sub(before);
        let bound = 32 * 1024;
        eprintln!("sled cache {} KiB: RSS grew {grown} KiB writing ~50 MiB (bound {bound} KiB)", super::CACHE_BYTES / 1024);
        assert!(grown <= bound, "RSS grew {grown} KiB, bound {bound} KiB");
    }

    /// Regression (issue 12): sled allocated and zeroed 65,536 buckets for each of its ~40 metrics
    /// histograms when the first database opened (21 MB written), although posgate builds it with
    /// `no_metrics` and never reads them: 21 MB resident in every debug daemon, and an idle RSS of 32 MiB
    /// instead of 15 with jemalloc. The vendored sled allocates no buckets under `no_metrics`.
    #[test]
    #[cfg(target_os = "linux")]
    fn opening_the_journals_sled_writes_no_metrics_histograms() {
        let dir = tempfile::tempdir().unwrap();
        let before = rss_kib();
        let db = super::config(dir.path()).open().unwrap();
        let tree = db.open_tree("records").unwrap();
        tree.insert(1u64.to_be_bytes(), &b"x"[..]).unwrap();
        db.flush().unwrap();
        let grown = rss_kib().saturating_sub(before);
        eprintln!("RSS grew {grown} KiB opening a sled database");
        assert!(grown < 8 * 1024, "opening sled grew the RSS by {grown} KiB");
    }
}
