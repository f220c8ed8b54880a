//! store-eval: measures embedded KV stores on the live-comments workload.
//!
//!   cargo run --release -- [--stores redb,redb-qr,fjall,heed] [--records 1000000] [--dir PATH]
//!                          [--append-secs 3] [--crash-rounds 5]
//!
//! Prints a markdown table to stdout; progress goes to stderr.

mod crash;
mod stores;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stores::{Result, Table};
use workload::*;

pub struct Args {
    stores: Vec<String>,
    records: u64,
    dir: PathBuf,
    append_secs: f64,
    crash_rounds: usize,
}

const APPEND_BATCHES: [usize; 4] = [1, 16, 128, 1024];
const APPEND_MIN_RECORDS: usize = 20_000;
const APPEND_MAX_SECS: f64 = 15.0;
const APPEND_STREAMS: usize = 16;
const LOAD_BATCH: usize = 1024;
const MAIN_STREAM: &str = "live-main";
const SCAN_LEN: usize = 500;
const QUERIES: usize = 1_000;
const DEDUP_QUERIES: usize = 10_000;

type Metrics = Vec<(String, String)>;

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("crash-child") {
        return crash::child(&argv[2..]);
    }
    let args = parse_args(&argv[1..])?;
    let mut all = Vec::new();
    for kind in &args.stores {
        eprintln!("== {kind}");
        let dir = args.dir.join(kind);
        let _ = std::fs::remove_dir_all(&dir);
        let m = bench_store(kind, &dir, &args)?;
        let _ = std::fs::remove_dir_all(&dir);
        all.push((kind.clone(), m));
    }
    print_table(&all);
    Ok(())
}

fn parse_args(a: &[String]) -> Result<Args> {
    let mut args = Args {
        stores: stores::STORES.iter().map(|s| s.to_string()).collect(),
        records: 1_000_000,
        dir: std::env::temp_dir().join("store-eval-data"),
        append_secs: 3.0,
        crash_rounds: 5,
    };
    let mut it = a.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--stores" => args.stores = val()?.split(',').map(String::from).collect(),
            "--records" => args.records = val()?.parse()?,
            "--dir" => args.dir = val()?.into(),
            "--append-secs" => args.append_secs = val()?.parse()?,
            "--crash-rounds" => args.crash_rounds = val()?.parse()?,
            _ => return Err(format!("unknown flag {flag}; see src/main.rs header").into()),
        }
    }
    for s in &args.stores {
        if !stores::STORES.contains(&s.as_str()) {
            return Err(format!("unknown store {s}; known: {:?}", stores::STORES).into());
        }
    }
    Ok(args)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}
fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn bench_store(kind: &str, dir: &Path, args: &Args) -> Result<Metrics> {
    let mut m: Metrics = Vec::new();
    let mut put = |k: &str, v: String| {
        eprintln!("  {k}: {v}");
        m.push((k.to_string(), v));
    };

    // 1. Group-commit append: one durable commit per batch, rows round-robin over 16 streams.
    for b in APPEND_BATCHES {
        let adir = dir.join(format!("append-{b}"));
        let mut store = stores::open(kind, &adir)?;
        let streams: Vec<String> = (0..APPEND_STREAMS).map(|i| format!("live-{i:02}")).collect();
        let mut next = [0u64; APPEND_STREAMS];
        let (mut lat, mut n, t0) = (Vec::new(), 0usize, Instant::now());
        loop {
            let el = t0.elapsed().as_secs_f64();
            if (el >= args.append_secs && n >= APPEND_MIN_RECORDS) || el >= APPEND_MAX_SECS {
                break;
            }
            let batch: Vec<_> = (0..b)
                .map(|j| {
                    let s = (n + j) % APPEND_STREAMS;
                    next[s] += 1;
                    row(&streams[s], next[s] - 1)
                })
                .collect();
            let t = Instant::now();
            store.commit(&batch)?;
            lat.push(t.elapsed());
            n += b;
        }
        let busy: Duration = lat.iter().sum();
        let commits = lat.len();
        let (p50, p99) = percentiles(&mut lat);
        put(&format!("append b={b}: records/s"), format!("{:.0}", n as f64 / busy.as_secs_f64()));
        put(&format!("append b={b}: commit p50 / p99 ms"), format!("{} / {}", ms(p50), ms(p99)));
        put(&format!("append b={b}: commits measured"), commits.to_string());
        drop(store);
        let _ = std::fs::remove_dir_all(&adir);
    }

    // 2. Load N records into one stream (durable commits of LOAD_BATCH).
    let main = dir.join("main");
    let n = args.records;
    let mut store = stores::open(kind, &main)?;
    let t0 = Instant::now();
    let mut seq = 0;
    while seq < n {
        let b = LOAD_BATCH.min((n - seq) as usize);
        store.commit(&rows(MAIN_STREAM, seq, b))?;
        seq += b as u64;
    }
    put(&format!("load {n} records (b={LOAD_BATCH}) s"), format!("{:.1}", t0.elapsed().as_secs_f64()));
    let t = Instant::now();
    drop(store);
    put("close after load ms", ms(t.elapsed()));
    put("on-disk size MiB", format!("{:.0}", dir_bytes(&main)? as f64 / (1 << 20) as f64));

    // 4. Clean reopen: open + first point read.
    let t = Instant::now();
    let store = stores::open(kind, &main)?;
    assert!(get_exists(&*store, Table::Primary, &primary_key(MAIN_STREAM, n - 1))?);
    put("reopen (clean) ms", ms(t.elapsed()));

    // 2a. 500 consecutive records by seq range.
    let mut rng = Rng::new(42);
    let mut lat = Vec::with_capacity(QUERIES);
    for _ in 0..QUERIES {
        let start = rng.below(n - SCAN_LEN as u64);
        let t = Instant::now();
        let mut bytes = 0;
        let mut got = 0;
        store.read(&mut |s| {
            let (from, to) = (primary_key(MAIN_STREAM, start), primary_key(MAIN_STREAM, u64::MAX));
            got = s.range(Table::Primary, &from, &to, SCAN_LEN, &mut |_, v| bytes += v.len())?;
            Ok(())
        })?;
        lat.push(t.elapsed());
        assert_eq!(got, SCAN_LEN);
        assert!(bytes >= SCAN_LEN * RECORD_BYTES);
    }
    let (p50, p99) = percentiles(&mut lat);
    put("scan 500 by seq p50 / p99 µs", format!("{} / {}", us(p50), us(p99)));

    // 2b. Time window: seek index at offset, take 500 entries, point-read each record.
    let max_off = n * MS_PER_SEQ;
    let mut lat = Vec::with_capacity(QUERIES);
    for _ in 0..QUERIES {
        let off = rng.below(max_off - (SCAN_LEN as u64 + 100) * MS_PER_SEQ);
        let t = Instant::now();
        let mut got = 0;
        store.read(&mut |s| {
            let mut seqs = Vec::with_capacity(SCAN_LEN);
            let (from, to) = (index_key(MAIN_STREAM, off, 0), index_key(MAIN_STREAM, u64::MAX, 0));
            s.range(Table::Index, &from, &to, SCAN_LEN, &mut |k, _| {
                seqs.push(u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap()))
            })?;
            let mut buf = Vec::new();
            for q in seqs {
                got += s.get(Table::Primary, &primary_key(MAIN_STREAM, q), &mut buf)? as usize;
            }
            Ok(())
        })?;
        lat.push(t.elapsed());
        assert_eq!(got, SCAN_LEN);
    }
    let (p50, p99) = percentiles(&mut lat);
    put("time-window 500 + point reads p50 / p99 µs", format!("{} / {}", us(p50), us(p99)));

    // 3. Dedup point lookups (hit = existing message, miss = new message, the common case).
    for hit in [true, false] {
        let mut lat = Vec::with_capacity(DEDUP_QUERIES);
        for i in 0..DEDUP_QUERIES {
            let q = rng.below(n);
            let key = if hit {
                dedup_key(MAIN_STREAM, &user_id(q), &client_msg_id(q))
            } else {
                dedup_key(MAIN_STREAM, &user_id(q), &format!("new-{i}"))
            };
            let mut buf = Vec::new();
            let t = Instant::now();
            let found = get_into(&*store, Table::Dedup, &key, &mut buf)?;
            lat.push(t.elapsed());
            assert_eq!(found, hit);
            assert!(!hit || buf == q.to_be_bytes());
        }
        let (p50, p99) = percentiles(&mut lat);
        let name = if hit { "dedup lookup hit p50 / p99 µs" } else { "dedup lookup miss p50 / p99 µs" };
        put(name, format!("{} / {}", us(p50), us(p99)));
    }
    drop(store);

    // 4b. Reopen after kill -9 of a writer on the big database.
    let r = crash::round(kind, &main, MAIN_STREAM, n, Duration::from_millis(300))?;
    put("reopen after kill -9 (loaded db) ms", ms(r.reopen));
    put("kill -9 on loaded db: acked seqs present", if r.ok { "yes".into() } else { r.detail.clone() });

    // 5. Crash test on a small database, repeated.
    let cdir = dir.join("crash");
    let (mut pass, mut start, mut acked, mut worst) = (0, 0u64, 0u64, Duration::ZERO);
    for i in 0..args.crash_rounds {
        let r = crash::round(kind, &cdir, "crash", start, Duration::from_millis(1000 + 97 * i as u64))?;
        eprintln!("  crash round {}: {}", i + 1, r.detail);
        pass += r.ok as usize;
        acked += r.acked_commits;
        worst = worst.max(r.reopen);
        start = r.next_seq;
    }
    put("crash test (kill -9) passed", format!("{pass}/{}", args.crash_rounds));
    put("crash test: acked commits checked", acked.to_string());
    put("crash test: worst reopen ms", ms(worst));
    Ok(m)
}

pub fn get_into(store: &dyn stores::Store, t: Table, key: &[u8], buf: &mut Vec<u8>) -> Result<bool> {
    let mut found = false;
    store.read(&mut |s| {
        found = s.get(t, key, buf)?;
        Ok(())
    })?;
    Ok(found)
}

pub fn get_exists(store: &dyn stores::Store, t: Table, key: &[u8]) -> Result<bool> {
    get_into(store, t, key, &mut Vec::new())
}

/// Allocated bytes of all files under `p` (st_blocks, so sparse/preallocated space is honest).
fn dir_bytes(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let md = e.metadata()?;
        total += if md.is_dir() { dir_bytes(&e.path())? } else { md.blocks() * 512 };
    }
    Ok(total)
}

fn print_table(all: &[(String, Metrics)]) {
    println!();
    print!("| metric |");
    for (k, _) in all {
        print!(" {k} |");
    }
    print!("\n|---|");
    for _ in all {
        print!("---:|");
    }
    println!();
    for (i, (label, _)) in all[0].1.iter().enumerate() {
        print!("| {label} |");
        for (_, m) in all {
            print!(" {} |", m.get(i).map_or("", |x| x.1.as_str()));
        }
        println!();
    }
}
