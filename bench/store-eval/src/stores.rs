//! One small adapter per candidate store behind a common interface.
//!
//! Every adapter keeps three tables:
//!   primary: (stream, seq)                 -> record bytes
//!   index:   (stream, offset_ms, seq)      -> empty
//!   dedup:   (stream, user, client_msg_id) -> seq (u64 big-endian)
//! and `commit` writes one batch of rows into all three atomically and durably:
//! it returns only after the store has fsynced the commit.

use std::cell::OnceCell;
use std::ops::Bound;
use std::path::Path;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub const STORES: &[&str] = &["redb", "redb-qr", "fjall", "heed"];

/// Cache given to the stores that have their own (redb, fjall). LMDB uses the OS page cache.
const CACHE_BYTES: usize = 256 << 20;

#[derive(Clone, Copy)]
pub enum Table {
    Primary = 0,
    Index = 1,
    Dedup = 2,
}
const TABLE_NAMES: [&str; 3] = ["primary", "index", "dedup"];

/// One comment, already encoded into its three key-value pairs.
pub struct Row {
    pub pk: Vec<u8>,
    pub value: Vec<u8>,
    pub ik: Vec<u8>,
    pub dk: Vec<u8>,
    pub seq: u64,
}

/// A consistent read view (one read transaction / snapshot).
pub trait Snapshot {
    /// Copies the value into `out`; false if the key is absent.
    fn get(&self, t: Table, key: &[u8], out: &mut Vec<u8>) -> Result<bool>;
    /// Visits up to `limit` entries with `from <= key < to`, in key order.
    fn range(&self, t: Table, from: &[u8], to: &[u8], limit: usize, f: &mut dyn FnMut(&[u8], &[u8]))
        -> Result<usize>;
}

pub trait Store {
    /// Writes all rows in ONE atomic transaction; returns after it is durable (fsynced).
    fn commit(&mut self, rows: &[Row]) -> Result<()>;
    /// Runs `f` against one read snapshot.
    fn read(&self, f: &mut dyn FnMut(&dyn Snapshot) -> Result<()>) -> Result<()>;
}

pub fn open(kind: &str, dir: &Path) -> Result<Box<dyn Store>> {
    std::fs::create_dir_all(dir)?;
    Ok(match kind {
        "redb" => Box::new(Redb::open(dir, false)?),
        "redb-qr" => Box::new(Redb::open(dir, true)?),
        "fjall" => Box::new(Fjall::open(dir)?),
        "heed" => Box::new(Heed::open(dir)?),
        _ => return Err(format!("unknown store {kind}; known: {STORES:?}").into()),
    })
}

// ---------------------------------------------------------------- redb

type RedbDef = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;
const REDB_TABLES: [RedbDef; 3] = [
    RedbDef::new(TABLE_NAMES[0]),
    RedbDef::new(TABLE_NAMES[1]),
    RedbDef::new(TABLE_NAMES[2]),
];

/// `quick_repair`: redb's option that makes commits slower but reopening after a crash instant.
struct Redb {
    db: redb::Database,
    quick_repair: bool,
}

impl Redb {
    fn open(dir: &Path, quick_repair: bool) -> Result<Self> {
        let db = redb::Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("data.redb"))?;
        Ok(Redb { db, quick_repair })
    }
}

impl Store for Redb {
    fn commit(&mut self, rows: &[Row]) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        // Immediate is redb's default; set explicitly. The commit is durable when commit() returns.
        tx.set_durability(redb::Durability::Immediate)?;
        tx.set_quick_repair(self.quick_repair);
        {
            let mut p = tx.open_table(REDB_TABLES[0])?;
            let mut i = tx.open_table(REDB_TABLES[1])?;
            let mut d = tx.open_table(REDB_TABLES[2])?;
            for r in rows {
                p.insert(r.pk.as_slice(), r.value.as_slice())?;
                i.insert(r.ik.as_slice(), &[][..])?;
                d.insert(r.dk.as_slice(), &r.seq.to_be_bytes()[..])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Snapshot) -> Result<()>) -> Result<()> {
        use redb::ReadableDatabase;
        let snap = RedbSnap { tx: self.db.begin_read()?, tables: Default::default() };
        f(&snap)
    }
}

struct RedbSnap {
    tx: redb::ReadTransaction,
    tables: [OnceCell<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>>; 3],
}

impl RedbSnap {
    fn table(&self, t: Table) -> Result<Option<&redb::ReadOnlyTable<&'static [u8], &'static [u8]>>> {
        let cell = &self.tables[t as usize];
        if cell.get().is_none() {
            let table = match self.tx.open_table(REDB_TABLES[t as usize]) {
                Ok(table) => Some(table),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let _ = cell.set(table);
        }
        Ok(cell.get().unwrap().as_ref())
    }
}

impl Snapshot for RedbSnap {
    fn get(&self, t: Table, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let Some(table) = self.table(t)? else { return Ok(false) };
        match table.get(key)? {
            Some(v) => {
                out.clear();
                out.extend_from_slice(v.value());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn range(&self, t: Table, from: &[u8], to: &[u8], limit: usize, f: &mut dyn FnMut(&[u8], &[u8]))
        -> Result<usize> {
        let Some(table) = self.table(t)? else { return Ok(0) };
        let mut n = 0;
        for kv in table.range(from..to)?.take(limit) {
            let (k, v) = kv?;
            f(k.value(), v.value());
            n += 1;
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------- fjall

struct Fjall {
    db: fjall::Database,
    ks: [fjall::Keyspace; 3],
}

impl Fjall {
    fn open(dir: &Path) -> Result<Self> {
        let db = fjall::Database::builder(dir).cache_size(CACHE_BYTES as u64).open()?;
        let ks = TABLE_NAMES.map(|n| db.keyspace(n, fjall::KeyspaceCreateOptions::default));
        let [p, i, d] = ks;
        Ok(Fjall { ks: [p?, i?, d?], db })
    }
}

impl Store for Fjall {
    fn commit(&mut self, rows: &[Row]) -> Result<()> {
        // With Some(SyncAll), WriteBatch::commit writes the batch to the journal and fsyncs
        // the journal file (File::sync_all) before returning.
        let mut b = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        let [p, i, d] = &self.ks;
        for r in rows {
            b.insert(p, r.pk.as_slice(), r.value.as_slice());
            b.insert(i, r.ik.as_slice(), &[][..]);
            b.insert(d, r.dk.as_slice(), &r.seq.to_be_bytes()[..]);
        }
        b.commit()?;
        Ok(())
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Snapshot) -> Result<()>) -> Result<()> {
        f(&FjallSnap { snap: self.db.snapshot(), ks: &self.ks })
    }
}

struct FjallSnap<'a> {
    snap: fjall::Snapshot,
    ks: &'a [fjall::Keyspace; 3],
}

impl Snapshot for FjallSnap<'_> {
    fn get(&self, t: Table, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        use fjall::Readable;
        match self.snap.get(&self.ks[t as usize], key)? {
            Some(v) => {
                out.clear();
                out.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn range(&self, t: Table, from: &[u8], to: &[u8], limit: usize, f: &mut dyn FnMut(&[u8], &[u8]))
        -> Result<usize> {
        use fjall::Readable;
        let mut n = 0;
        for g in self.snap.range(&self.ks[t as usize], from..to).take(limit) {
            let (k, v) = g.into_inner()?;
            f(&k, &v);
            n += 1;
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------- heed (LMDB)

type HeedDb = heed::Database<'static, heed::types::Bytes, heed::types::Bytes>;

struct Heed {
    env: Option<heed::Env>,
    dbs: [HeedDb; 3],
}

impl Heed {
    fn open(dir: &Path) -> Result<Self> {
        // Default flags: no MDB_NOSYNC / MDB_NOMETASYNC, so mdb_txn_commit syncs before returning.
        let env = unsafe {
            heed::EnvOpenOptions::new().map_size(16 << 30).max_dbs(3).open(dir)?
        };
        let wtxn = env.write_txn()?;
        let dbs = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                let [p, i, d] = TABLE_NAMES;
                Ok(heed::CommitOrAbort::<_, ()>::Commit([
                    opener.create_database::<heed::types::Bytes, heed::types::Bytes>(wtxn, Some(p))?,
                    opener.create_database(wtxn, Some(i))?,
                    opener.create_database(wtxn, Some(d))?,
                ]))
            })?
            .unwrap_commit();
        Ok(Heed { env: Some(env), dbs })
    }

    fn env(&self) -> &heed::Env {
        self.env.as_ref().unwrap()
    }
}

impl Drop for Heed {
    fn drop(&mut self) {
        // Make sure the environment is really closed before the caller reopens it.
        if let Some(env) = self.env.take() {
            env.prepare_for_closing().wait();
        }
    }
}

impl Store for Heed {
    fn commit(&mut self, rows: &[Row]) -> Result<()> {
        let mut tx = self.env().write_txn()?;
        let [p, i, d] = &self.dbs;
        for r in rows {
            p.put(&mut tx, &r.pk, &r.value)?;
            i.put(&mut tx, &r.ik, &[])?;
            d.put(&mut tx, &r.dk, &r.seq.to_be_bytes())?;
        }
        tx.commit()?; // mdb_txn_commit: writes pages, then fdatasync/msync, then meta page + sync
        Ok(())
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Snapshot) -> Result<()>) -> Result<()> {
        let tx = self.env().read_txn()?;
        f(&HeedSnap { tx: &tx, dbs: &self.dbs })
    }
}

struct HeedSnap<'a, 'e> {
    tx: &'a heed::RoTxn<'e>,
    dbs: &'a [HeedDb; 3],
}

impl Snapshot for HeedSnap<'_, '_> {
    fn get(&self, t: Table, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        match self.dbs[t as usize].get(self.tx, key)? {
            Some(v) => {
                out.clear();
                out.extend_from_slice(v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn range(&self, t: Table, from: &[u8], to: &[u8], limit: usize, f: &mut dyn FnMut(&[u8], &[u8]))
        -> Result<usize> {
        let bounds = (Bound::Included(from), Bound::Excluded(to));
        let mut n = 0;
        for kv in self.dbs[t as usize].range(self.tx, &bounds)?.take(limit) {
            let (k, v) = kv?;
            f(k, v);
            n += 1;
        }
        Ok(n)
    }
}
