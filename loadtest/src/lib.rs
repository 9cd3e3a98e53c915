//! `marc-loadtest`: a load tester for marc's gRPC API that replays captured traffic at its recorded timing, drives
//! open-loop load without coordinated omission, and writes reports people can act on.
//!
//! One concern per module:
//!
//! - [`generate`]: synthetic traces (arrivals, sizes, option mixes), in the `marc-trace` format that
//!   `marc serve --capture` writes;
//! - [`schedule`]: intended send times (replay at a speed, rate profiles with constant or Poisson arrivals);
//! - [`client`]: the pool of HTTP/2 connections, unary and streamed calls;
//! - [`run`]: the driver (open and closed loop, bounded by count, duration and in-flight calls);
//! - [`record`]: HdrHistograms from the intended and the actual send, lateness, errors, per-second series;
//! - [`report`]: summary, JSON, CSV, SVG plots and SLO checks; [`compare`]: two JSON reports side by side;
//! - [`progress`]: the live line on stderr.

pub mod client;
pub mod compare;
pub mod generate;
pub mod progress;
pub mod record;
pub mod report;
pub mod run;
pub mod schedule;
