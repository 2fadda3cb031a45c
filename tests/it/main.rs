//! Integration tests: one binary, one module per area. Every test that touches Kafka runs the
//! real protocol, against librdkafka's mock cluster (in-process) or, in [`cluster`], a broker
//! process of its own (tansu) with tables in S3, and arms a [`support::Watchdog`] so a hang fails
//! loudly instead of eating CI's time.

mod support;

mod agent;
mod alerts_out;
mod allocator;
mod auth;
mod batching;
mod cdf;
mod cluster;
mod console;
mod crash;
mod exactly_once;
mod golden;
mod governed;
mod independent_reader;
mod knowledge;
mod maintain;
mod mcp;
mod modules;
mod reliability;
mod replicas;
mod scale_out;
mod schemas;
mod signals;
mod tenancy;
