//! livecomments-bench: a load generator that runs the same scenario against livecomments and
//! Mosquitto on one machine and reports them side by side.
//!
//! Modules by concern: [`target`] starts or attaches to the system under test, [`mqtt`] is the
//! light client, [`schedule`] the fixed posting schedule, [`payload`] what is sent and parsed,
//! [`stats`] and [`sampler`] what is measured, [`report`] and [`plot`] what is written.
//! One module per scenario of docs/benchmarks.md: [`fanout`] (also the engine of [`ingest`]
//! and [`mixed`]), [`connections`], [`ingest`], [`reactions`], [`replay`], [`mixed`].
//! [`cli`] is the command line, one subcommand per scenario.

pub mod cli;
pub mod connections;
pub mod fanout;
pub mod ingest;
pub mod mixed;
pub mod mqtt;
pub mod payload;
pub mod plot;
pub mod probe;
pub mod reactions;
pub mod replay;
pub mod report;
pub mod sampler;
pub mod schedule;
pub mod stats;
pub mod target;
