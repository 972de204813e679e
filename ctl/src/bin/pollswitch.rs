//! `pollswitch`: the switch daemon. QEMU's command-line syntax for ports
//! (`-netdev TYPE,id=ID,...`), plus the data plane's own options; see `--help`.

use std::process::ExitCode;
use std::sync::mpsc;

use ctl::cli::{DaemonArgs, USAGE};
use ctl::daemon::Daemon;
use ctl::netdev::InheritedFds;
use ctl::qmp::server::{listen, monitors, Control, Msg};
use switch::pool::PageKind;
use switch::SwitchConfig;

fn main() -> ExitCode {
    // Arguments as the OS gives them: paths may be any bytes, other values must be
    // UTF-8 (ctl::osarg); nothing panics on either.
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(ctl::osarg::encode)
        .collect();
    let args = match DaemonArgs::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pollswitch: {e}");
            eprintln!("Try 'pollswitch --help' for more information.");
            return ExitCode::from(1);
        }
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("pollswitch {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // Every argument is checked before anything is allocated or started.
    let monitors = match monitors(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pollswitch: {e}");
            return ExitCode::from(1);
        }
    };
    // Before any thread exists: the fork copies a single-threaded process.
    let mut detached = if args.daemonize {
        match ctl::process::daemonize() {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("pollswitch: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    if let Err(e) = ctl::log::init(&ctl::log::LogConfig {
        file: args.log_file.clone(),
        timestamps: args.timestamps,
    }) {
        eprintln!("pollswitch: {e}");
        return ExitCode::from(1);
    }
    let _pidfile = match args.pidfile.as_deref().map(ctl::process::PidFile::create) {
        Some(Err(e)) => {
            eprintln!("pollswitch: {e}");
            return ExitCode::from(1);
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let cfg = SwitchConfig {
        cores: match &args.cores {
            Some(list) => list.iter().map(|c| Some(*c)).collect(),
            None => switch::switch::default_cores(),
        },
        pool_size: args.pool_size,
        max_frame: args.max_frame as usize,
        gso_buffers: args.gso_buffers,
        default_poll_us: args.poll_us,
        ring_size: None,
    };
    let mut daemon = match Daemon::start(&cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pollswitch: {e}");
            return ExitCode::from(1);
        }
    };
    let (tx, rx) = mpsc::channel();
    daemon.set_events(tx.clone());
    for c in &args.chardevs {
        if let Err(e) = daemon.chardev_add(c.clone()) {
            eprintln!("pollswitch: -chardev {}: {e}", c.id);
            let _ = daemon.shutdown();
            return ExitCode::from(1);
        }
    }
    // The ports first: a -netdev that cannot open is the first and only line.
    for nd in &args.netdevs {
        if let Err(e) = daemon.netdev_add(nd, &mut InheritedFds) {
            eprintln!("pollswitch: -netdev {}: {e}", nd.id);
            let _ = daemon.shutdown();
            return ExitCode::from(1);
        }
    }
    let pool = daemon.switch().pool().clone();
    let info = daemon.switch().info().clone();
    eprintln!(
        "pollswitch: pool of {} buffers of {} bytes in a shared memfd on {} pages; \
         {} reserved for worker rings ({} slots each) and caches; io_uring: {}, multishot receive {}",
        pool.count(),
        pool.buf_size(),
        match info.pages {
            PageKind::Huge => "2 MiB huge",
            _ => "normal (no huge pages available)",
        },
        info.reserved,
        info.ring_size,
        if info.deferred {
            "deferred task running"
        } else {
            "task running on every completion (no DEFER_TASKRUN)"
        },
        if info.multishot { "on" } else { "off (kernel lacks it)" },
    );
    eprintln!(
        "pollswitch: UDP GSO sends {}",
        if backends::io::udp_gso_supported() {
            "on"
        } else {
            "off (the kernel does not segment UDP_SEGMENT sends)"
        }
    );
    let cores: Vec<String> = cfg
        .cores
        .iter()
        .map(|c| c.map_or("any".to_string(), |c| c.to_string()))
        .collect();
    eprintln!(
        "pollswitch: {} worker(s) on core(s) {}; default poll-us {}; max frame {} bytes",
        cfg.cores.len(),
        cores.join(","),
        cfg.default_poll_us,
        cfg.max_frame
    );
    let sig = tx.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = sig.send(Msg::Signal);
    }) {
        eprintln!("pollswitch: cannot install signal handler: {e}");
        return ExitCode::from(1);
    }
    // Held to the end: dropping it removes the unix sockets.
    let _listeners = match listen(&monitors, &tx) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pollswitch: {e}");
            let _ = daemon.shutdown();
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = &args.metrics {
        if let Err(e) = ctl::metrics::serve(addr, tx.clone()) {
            eprintln!("pollswitch: {e}");
            let _ = daemon.shutdown();
            return ExitCode::from(1);
        }
        eprintln!("pollswitch: metrics on http://{addr}/metrics");
    }
    for m in &monitors {
        eprintln!(
            "pollswitch: QMP on {:?}{}",
            m.at,
            if m.pretty { " (pretty)" } else { "" }
        );
    }
    eprintln!(
        "pollswitch: ready ({} netdev(s), {} worker(s))",
        args.netdevs.len(),
        cfg.cores.len()
    );
    tracing::info!(
        "ready{}: {} netdev(s), {} worker(s)",
        args.name
            .as_deref()
            .map(|n| format!(" as '{n}'"))
            .unwrap_or_default(),
        args.netdevs.len(),
        cfg.cores.len()
    );
    if let Some(d) = &mut detached {
        d.ready();
    }
    let mut control = Control::new(daemon);
    control.name = args.name.clone();
    control.run(&rx);
    // The SHUTDOWN event (and quit's reply) reach the clients before the sockets close.
    control.flush(std::time::Duration::from_secs(1));
    eprintln!("pollswitch: shutting down");
    match control.daemon.shutdown() {
        Ok(p) => {
            eprintln!("pollswitch: pool: {} of {} buffers free", p.free, p.total);
            if p.gso_total > 0 {
                eprintln!(
                    "pollswitch: GSO buffers: {} of {} free",
                    p.gso_free, p.gso_total
                );
            }
            if p.all_back() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "pollswitch: {} buffer(s) and {} GSO buffer(s) were not returned",
                    p.total - p.free,
                    p.gso_total - p.gso_free
                );
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("pollswitch: shutdown: {e}");
            ExitCode::from(1)
        }
    }
}
