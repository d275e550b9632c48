//! Measures what a durable point costs on this machine: sled flush (its sync_file_range) and the fdatasync after it, against a plain write + fdatasync, and the journal's high-water mark update.
#![allow(clippy::disallowed_methods)]
use std::io::Write;
use std::time::Instant;
fn main() {
    let dir = std::env::temp_dir().join(format!("synccost-{}", std::process::id()));
    let db = sled::Config::new().path(&dir).mode(sled::Mode::LowSpace).flush_every_ms(None).open().unwrap();
    let f = std::fs::File::open(dir.join("db")).unwrap();
    let n = 2000;
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    for i in 0..n {
        db.insert((i as u64).to_be_bytes(), vec![0u8; 600]).unwrap();
        let t = Instant::now();
        db.flush().unwrap();
        a.push(t.elapsed());
        let t = Instant::now();
        f.sync_data().unwrap();
        b.push(t.elapsed());
    }
    let mut g = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("plain")).unwrap();
    for _ in 0..n {
        let t = Instant::now();
        g.write_all(&[0u8; 600]).unwrap();
        g.sync_data().unwrap();
        c.push(t.elapsed());
    }
    // The high-water mark's update as the sync thread does it after each group commit that moved it.
    let mut d = Vec::new();
    let mut mark = posgate::journal::mark::Mark::default();
    mark.profiles.insert("loyalty".into(), posgate::journal::mark::ProfileMark { batch: Some("000001".into()), batch_open: true, ..Default::default() });
    let mut m = posgate::journal::mark::MarkFile::create(&dir.join("journal.hwm"), &mark).unwrap();
    for i in 0..n {
        mark.last_id = i as u64 + 1;
        if let Some(p) = mark.profiles.get_mut("loyalty") {
            p.seq += 1;
            p.last_trace = i as u32 + 1;
            p.idem_keys += 1;
        }
        let t = Instant::now();
        m.update(&mark).unwrap();
        d.push(t.elapsed());
    }
    for (name, mut v) in [("sled flush", a), ("fdatasync after flush", b), ("plain write+fdatasync", c), ("high-water mark update", d)] {
        v.sort();
        println!("{name}: median {:?} p99 {:?}", v[v.len() / 2], v[v.len() * 99 / 100]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
