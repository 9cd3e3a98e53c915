//! The `marc-loadtest` command line: parses flags, builds the request source and schedule, runs, reports.
//!
//! Exit codes: 0 success; 1 an error (bad flags, unreadable trace, no server); 2 usage; [`EXIT_SLO_BROKEN`] when
//! `--slo` is broken; [`EXIT_REGRESSION`] when `compare` flags a regression.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use clap::{Args, Parser, Subcommand};
use marc_loadtest::client::{Pool, Prepared};
use marc_loadtest::compare::{self, Thresholds};
use marc_loadtest::generate::{self, Arrival, Content, Dist, GenSpec, WeightedOptions};
use marc_loadtest::progress::Progress;
use marc_loadtest::record::Recorder;
use marc_loadtest::report::slo::{self, Slo};
use marc_loadtest::report::{Report, RunInfo, csv, plot, summary};
use marc_loadtest::run::{Drive, Limits, run};
use marc_loadtest::schedule::{RateProfile, RateSchedule, Replay, parse_duration};
use marc_trace::Record;

/// The exit code when an `--slo` objective is broken.
const EXIT_SLO_BROKEN: u8 = 3;
/// The exit code when `compare` flags a regression.
const EXIT_REGRESSION: u8 = 4;

/// Distinct requests generated for `rate` and `closed` without `--trace` (then sent in turn).
const SYNTHETIC_REQUESTS: usize = 1024;

#[derive(Parser)]
#[command(
    name = "marc-loadtest",
    version,
    about = "Load tests a marc server: replays captured traffic, open-loop and closed-loop load, reports and SLO checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic trace (JSON lines, the format `marc serve --capture` writes).
    Gen(GenArgs),
    /// Replay a trace at its recorded timing (divided by --speed).
    Replay(ReplayArgs),
    /// Open loop at a rate (constant, steps or a ramp), constant or Poisson arrivals.
    Rate(RateArgs),
    /// Closed loop: N workers, each sending its next call when the previous one is answered.
    Closed(ClosedArgs),
    /// Compare two --json reports (A the baseline) and flag regressions.
    Compare(CompareArgs),
}

/// What synthetic requests look like (gen, and rate/closed without --trace).
#[derive(Args)]
struct ShapeArgs {
    /// Inputs per call: N, LO-HI (uniform) or lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "1")]
    items: Dist,
    /// Tokens per input (words with --content text), same forms as --items.
    #[arg(long, default_value = "16")]
    tokens: Dist,
    /// Input content: `ids` (random token ids below --vocab) or `text` (random words).
    #[arg(long, default_value = "ids", value_parser = ["ids", "text"])]
    content: String,
    /// Vocabulary size for --content ids (the demo model's is 4096).
    #[arg(long, default_value_t = 4096)]
    vocab: u32,
    /// Fraction of calls sent on EmbedStream instead of Embed, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    stream_fraction: f64,
    /// An option set with its weight, WEIGHT:key=value,... (trace field names: head, raw, layer, pooling,
    /// dimensions, normalize, encoding, truncation, priority); repeat for a mix. Default: the server's defaults.
    #[arg(long = "options", value_name = "MIX")]
    options: Vec<WeightedOptions>,
    /// Random seed (the same seed gives the same trace).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct GenArgs {
    /// The trace file to write.
    #[arg(long)]
    out: PathBuf,
    /// Number of calls.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Mean calls per second.
    #[arg(long, default_value_t = 100.0)]
    rps: f64,
    /// Arrival process: constant, poisson or bursts:SIZE.
    #[arg(long, default_value = "poisson")]
    arrival: Arrival,
    #[command(flatten)]
    shape: ShapeArgs,
}

/// Flags every load-generating mode shares.
#[derive(Args)]
struct RunArgs {
    /// The server, host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// HTTP/2 connections, used in turn.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Longest time calls are sent for (e.g. 30s, 2m). Default: 10s; replay: the trace's length.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Most calls sent.
    #[arg(long, default_value_t = 1_000_000)]
    max_calls: u64,
    /// Open loop: most calls outstanding; a call that finds none free waits (and is counted late).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Per-call timeout (sent as the gRPC deadline); calls still unanswered this long after the last send are
    /// counted as unfinished.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// A send later than this after its intended time counts as late.
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    late_threshold: Duration,
    /// Write the report as JSON (schema: loadtest/report.schema.json).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the per-second series as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Write latency.svg, spectrum.svg and throughput.svg into DIR.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Objectives, e.g. "p99<20ms,errors<0.1%"; a broken one makes the exit code 3.
    #[arg(long)]
    slo: Option<Slo>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Time between progress lines.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    progress_interval: Duration,
}

#[derive(Args)]
struct ReplayArgs {
    /// The trace (JSON lines).
    trace: PathBuf,
    /// Speed: recorded gaps are divided by it (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Start again at the end (needs --duration or --max-calls to stop).
    #[arg(long = "loop")]
    looping: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Where `rate` and `closed` take their requests from.
#[derive(Args)]
struct SourceArgs {
    /// Send the requests of this trace in turn (their timing is ignored) instead of synthetic ones.
    #[arg(long)]
    trace: Option<PathBuf>,
    #[command(flatten)]
    shape: ShapeArgs,
}

#[derive(Args)]
struct RateArgs {
    /// Calls per second: R, steps R1:T1,R2:T2,... or ramp:FROM..TO:T.
    #[arg(long)]
    rps: RateProfile,
    /// Arrivals: constant or poisson.
    #[arg(long, default_value = "constant", value_parser = ["constant", "poisson"])]
    arrival: String,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct ClosedArgs {
    /// Workers, each with one call in flight.
    #[arg(long)]
    concurrency: usize,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct CompareArgs {
    /// The baseline report.
    a: PathBuf,
    /// The report compared with it.
    b: PathBuf,
    /// A latency higher or a throughput lower than A's by more than this percent is a regression.
    #[arg(long, default_value_t = 10.0)]
    threshold: f64,
    /// An error percentage higher than A's by more than this many points is a regression.
    #[arg(long, default_value_t = 0.1)]
    error_threshold: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("marc-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Gen(args) => gen_trace(&args),
        Command::Compare(args) => compare_reports(&args),
        Command::Replay(args) => {
            let records = read_trace(&args.trace)?;
            let offsets: Vec<u64> = records.iter().map(|r| r.offset_ns).collect();
            let replay = Replay::new(&offsets, args.speed, args.looping)?;
            let duration = match (args.run.duration, args.looping) {
                (Some(d), _) => d,
                // One pass: the last call is intended at period - one mean gap, inside the period.
                (None, false) => replay.period(),
                (None, true) => anyhow::bail!("--loop needs --duration"),
            };
            execute("replay", &args.run, duration, &records, Drive::Open(Box::new(replay)))
        }
        Command::Rate(args) => {
            let records = requests(&args.source)?;
            let seed = (args.arrival == "poisson").then_some(args.source.shape.seed);
            let schedule = RateSchedule::new(args.rps, seed, records.len());
            let duration = args.run.duration.unwrap_or(Duration::from_secs(10));
            execute("rate", &args.run, duration, &records, Drive::Open(Box::new(schedule)))
        }
        Command::Closed(args) => {
            ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
            let records = requests(&args.source)?;
            let duration = args.run.duration.unwrap_or(Duration::from_secs(10));
            let drive = Drive::Closed {
                concurrency: args.concurrency,
            };
            execute("closed", &args.run, duration, &records, drive)
        }
    }
}

fn read_trace(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the trace {}", path.display()))?;
    let records =
        marc_trace::read(std::io::BufReader::new(file)).with_context(|| format!("trace {}", path.display()))?;
    ensure!(!records.is_empty(), "trace {}: no calls", path.display());
    Ok(records)
}

fn spec(shape: &ShapeArgs, calls: usize, rps: f64, arrival: Arrival) -> GenSpec {
    GenSpec {
        calls,
        rps,
        arrival,
        items: shape.items.clone(),
        tokens: shape.tokens.clone(),
        content: match shape.content.as_str() {
            "text" => Content::Text,
            _ => Content::TokenIds { vocab: shape.vocab },
        },
        stream_fraction: shape.stream_fraction,
        options: shape.options.clone(),
        seed: shape.seed,
    }
}

/// The requests of `--trace`, or synthetic ones shaped by the gen flags.
fn requests(source: &SourceArgs) -> anyhow::Result<Vec<Record>> {
    match &source.trace {
        Some(path) => read_trace(path),
        None => Ok(generate::generate(&spec(
            &source.shape,
            SYNTHETIC_REQUESTS,
            1.0,
            Arrival::Constant,
        ))?),
    }
}

fn gen_trace(args: &GenArgs) -> anyhow::Result<ExitCode> {
    let records = generate::generate(&spec(&args.shape, args.calls, args.rps, args.arrival.clone()))?;
    let mut text = String::new();
    for r in &records {
        text.push_str(&r.to_line());
    }
    std::fs::write(&args.out, text).with_context(|| format!("--out {}: cannot write", args.out.display()))?;
    eprintln!(
        "marc-loadtest gen: {} calls written to {}",
        records.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn compare_reports(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let (a, b) = (Report::read_json(&args.a)?, Report::read_json(&args.b)?);
    let rows = compare::compare(
        &a,
        &b,
        Thresholds {
            relative_percent: args.threshold,
            error_points: args.error_threshold,
        },
    );
    print!("{}", compare::render(&rows));
    Ok(if rows.iter().any(|r| r.regression) {
        ExitCode::from(EXIT_REGRESSION)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs a load-generating mode and writes every report asked for.
fn execute(
    mode: &str,
    args: &RunArgs,
    duration: Duration,
    records: &[Record],
    drive: Drive,
) -> anyhow::Result<ExitCode> {
    let prepared = records
        .iter()
        .map(Prepared::from_record)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("marc-loadtest")
        .build()?;
    let (report_run, measurements) = runtime.block_on(async {
        let pool = Arc::new(Pool::connect(&args.target, args.connections, args.timeout).await?);
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let recorder = Arc::new(Recorder::new(args.late_threshold));
        let progress = (!args.quiet).then(|| Progress::start(recorder.clone(), args.progress_interval));
        let limits = Limits {
            duration,
            max_calls: args.max_calls,
            max_in_flight: args.max_in_flight,
            drain: args.timeout + Duration::from_secs(1),
        };
        let stop = async {
            // Without a signal handler (rare), never stop early.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        run(pool, Arc::new(prepared), drive, limits, recorder.clone(), stop).await;
        if let Some(p) = progress {
            p.finish().await;
        }
        let recorder = Arc::into_inner(recorder).context("the run left a task holding the recorder")?;
        let info = RunInfo {
            mode: mode.to_owned(),
            target: args.target.clone(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            started_unix_ms,
            connections: args.connections,
        };
        anyhow::Ok((info, recorder.finish()))
    })?;
    let mut report = Report::new(report_run, &measurements);
    let passed = args
        .slo
        .as_ref()
        .is_none_or(|s| slo::check(s, &measurements, &mut report));
    print!("{}", summary::render(&report));
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(path) = &args.csv {
        csv::write(&report, path)?;
    }
    if let Some(dir) = &args.plot {
        plot::write(&report, dir)?;
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SLO_BROKEN)
    })
}
