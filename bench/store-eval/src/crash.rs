//! Crash test: a child process appends durable batches and prints the last seq of each batch
//! after `commit` returns; the parent SIGKILLs it, reopens the store and checks that every
//! acknowledged seq is present in all three tables and that no batch is half-applied.
//!
//! Note: kill -9 loses only the process, not the OS page cache. It checks atomicity and
//! recovery, not power-loss durability (which depends on the fsync calls documented in
//! RESULTS.md and cannot be tested without cutting power / dm-flakey).

use crate::stores::{self, Result, Table};
use crate::workload::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const CRASH_BATCH: u64 = 16;

/// `crash-child <store> <dir> <stream> <start_seq>`: append until killed (or 60 s).
pub fn child(a: &[String]) -> Result<()> {
    let [kind, dir, stream, start] = a else { return Err("crash-child <store> <dir> <stream> <start>".into()) };
    let mut store = stores::open(kind, Path::new(dir))?;
    let mut seq: u64 = start.parse()?;
    let t0 = Instant::now();
    let mut out = std::io::stdout().lock();
    while t0.elapsed() < Duration::from_secs(60) {
        store.commit(&rows(stream, seq, CRASH_BATCH as usize))?;
        seq += CRASH_BATCH;
        writeln!(out, "{}", seq - 1)?; // acknowledged: commit() has returned
        out.flush()?;
    }
    Ok(())
}

pub struct Round {
    pub ok: bool,
    pub acked_commits: u64,
    pub reopen: Duration,
    pub next_seq: u64,
    pub detail: String,
}

/// Runs one child from `start`, kills it `kill_after` its first acknowledged commit, verifies.
pub fn round(kind: &str, dir: &Path, stream: &str, start: u64, kill_after: Duration) -> Result<Round> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["crash-child", kind, dir.to_str().unwrap(), stream, &start.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line.ok().and_then(|l| l.trim().parse().ok()) {
                Some(v) => {
                    let _ = tx.send(v);
                }
                None => break,
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(120));
    std::thread::sleep(kill_after);
    child.kill()?; // SIGKILL
    child.wait()?;
    reader.join().unwrap();
    let mut acked: Vec<u64> = first.into_iter().chain(rx.try_iter()).collect();
    acked.sort_unstable();
    let Some(&last) = acked.last() else {
        return Err(format!("{kind}: child acknowledged nothing").into());
    };

    // Reopen (timed: open + first read), then check.
    let t = Instant::now();
    let store = stores::open(kind, dir)?;
    let _ = crate::get_exists(&*store, Table::Primary, &primary_key(stream, last))?;
    let reopen = t.elapsed();

    let mut missing = 0u64;
    let mut extra = Vec::new();
    let mut torn = 0u64;
    store.read(&mut |s| {
        let mut buf = Vec::new();
        let present = |seq: u64, buf: &mut Vec<u8>| -> Result<[bool; 3]> {
            let r = row(stream, seq);
            let p = s.get(Table::Primary, &r.pk, buf)? && *buf == r.value;
            let i = s.get(Table::Index, &r.ik, buf)?;
            let d = s.get(Table::Dedup, &r.dk, buf)? && *buf == seq.to_be_bytes();
            Ok([p, i, d])
        };
        for seq in start.saturating_sub(1)..=last {
            if present(seq, &mut buf)? != [true; 3] {
                missing += 1;
            }
        }
        for seq in last + 1..last + 1 + 4 * CRASH_BATCH {
            match present(seq, &mut buf)? {
                [true, true, true] => extra.push(seq),
                [false, false, false] => {}
                _ => torn += 1,
            }
        }
        Ok(())
    })?;
    // A commit that became durable but was killed before printing shows up as exactly one
    // extra whole batch; anything else is a partial (torn) commit.
    let whole = extra.is_empty() || extra == (last + 1..=last + CRASH_BATCH).collect::<Vec<_>>();
    let ok = missing == 0 && torn == 0 && whole;
    let acked_commits = acked.len() as u64;
    let detail = format!(
        "{} acked commits (seq {start}..={last}), missing {missing}, unacked-but-present {}, torn {torn}, reopen {:.1} ms => {}",
        acked_commits,
        extra.len(),
        reopen.as_secs_f64() * 1e3,
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(Round { ok, acked_commits, reopen, next_seq: last + 1 + extra.len() as u64, detail })
}
