//! livecomments-bench: a load generator that runs the same scenario against livecomments and
//! Mosquitto on one machine and reports them side by side.
//!
//! Modules by concern: [`target`] starts or attaches to the system under test, [`mqtt`] is the
//! light client, [`schedule`] the fixed posting schedule, [`payload`] what is sent and parsed,
//! [`stats`] and [`sampler`] what is measured, [`report`] and [`plot`] what is written, and
//! [`fanout`] the scenario that ties them together. [`cli`] is the command line.

pub mod cli;
pub mod fanout;
pub mod mqtt;
pub mod payload;
pub mod plot;
pub mod report;
pub mod sampler;
pub mod schedule;
pub mod stats;
pub mod target;
