//! The daemon's command line and life cycle: what it refuses (exit status 1, with a
//! message naming the culprit), what it prints, and how it stops (SIGTERM or SIGINT:
//! exit status 0 with every pool buffer free).

mod common;

use std::net::{TcpListener, UdpSocket};
use std::process::Output;
use std::time::Duration;

use common::{expect_frame, mac, Args, BCAST, ETH_EXP};
use tests::{
    assert_clean_exit, frame, free_tcp_port, run, unique, wait_until, Daemon, UdpEnd, READY,
};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the daemon with `args` (after the usual test options) and checks that it
/// refuses them: exit status 1, never ready, and a message containing every one of
/// `needles`. Returns stderr.
fn refused(args: &[&str], needles: &[&str]) -> String {
    let base = Args::new();
    let mut all = base.strs();
    all.extend_from_slice(args);
    let out = Daemon::run_to_exit(&all);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "pollswitch {args:?}: exit status ({}); stderr:\n{err}",
        out.status
    );
    assert!(
        !err.contains(READY),
        "pollswitch {args:?} said it was ready:\n{err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "pollswitch {args:?}: the message does not mention {n:?}:\n{err}"
        );
    }
    err
}

fn link_exists(ifname: &str) -> bool {
    run("ip", &["link", "show", "dev", ifname]).status.success()
}

#[test]
fn help_and_version_exit_zero() {
    for flag in ["--help", "-help", "-h"] {
        let out = Daemon::run_to_exit(&[flag]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", stderr(&out));
        for word in [
            "Usage",
            "-netdev",
            "-cores",
            "-poll-us",
            "-pool-size",
            "-max-frame",
        ] {
            assert!(
                text.contains(word),
                "{flag} does not mention {word}:\n{text}"
            );
        }
    }
    for flag in ["-version", "--version", "-V"] {
        let out = Daemon::run_to_exit(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("pollswitch "),
            "{flag}: {:?}",
            out.stdout
        );
    }
}

#[test]
fn unknown_options_and_bad_values_are_refused_by_name() {
    refused(&["-bogus"], &["-bogus"]);
    refused(&["--no-such-option", "1"], &["--no-such-option"]);
    refused(&["stray"], &["stray"]);
    refused(&["-netdev"], &["-netdev"]);
    refused(&["-poll-us", "soon"], &["-poll-us", "soon"]);
    refused(&["-pool-size", "0"], &["-pool-size"]);
    refused(&["-max-frame", "65536"], &["-max-frame", "65536"]);
    refused(&["-max-frame", "13"], &["-max-frame", "13"]);
    refused(&["-cores", "x"], &["-cores"]);
    refused(&["-netdev", "hubport,id=h,hubid=0,bogus=1"], &["bogus"]);
    refused(&["-netdev", "hubport,hubid=0"], &["id"]);
    refused(&["-netdev", "hubport,id=h,hubid=zero"], &["hubid"]);
}

#[test]
fn unknown_netdev_type_is_refused() {
    refused(&["-netdev", "bogus,id=x"], &["bogus"]);
    refused(&["-netdev", "id=x"], &["type"]);
}

#[test]
fn unsupported_options_are_refused_saying_why() {
    let t = unique("pcv");
    let spec = format!("tap,id=tv,ifname={t},script=no,downscript=no,vhost=on");
    let err = refused(&["-netdev", &spec], &["tv", "vhost"]);
    assert!(err.contains("not supported"), "{err}");
    assert!(!link_exists(&t), "a refused tap was left behind");
    refused(
        &["-netdev", "tap,id=tf,script=no,downscript=no,vhostforce=on"],
        &["tf", "vhost"],
    );
    // helper= makes the helper create the tap: naming it too is QEMU's error.
    refused(
        &["-netdev", "tap,id=tb,helper=/nonexistent-helper,ifname=x"],
        &["tb", "helper"],
    );
    // Types this host can never run: the message says what they would need.
    refused(&["-netdev", "netmap,id=nm,ifname=eth0"], &["nm", "netmap"]);
    refused(
        &["-netdev", "vhost-vdpa,id=vd,vhostdev=/dev/vhost-vdpa-0"],
        &["vd", "vhost-vdpa"],
    );
}

#[test]
fn duplicate_id_is_refused() {
    refused(
        &[
            "-netdev",
            "hubport,id=dup,hubid=0",
            "-netdev",
            "hubport,id=dup,hubid=1",
        ],
        &["Duplicate", "dup"],
    );
    let t = unique("pcd");
    refused(
        &[
            "-netdev",
            &format!("tap,id=same,ifname={t},script=no,downscript=no"),
            "-netdev",
            "socket,id=same,udp=127.0.0.1:9,localaddr=127.0.0.1:0",
        ],
        &["Duplicate", "same"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || !link_exists(&t)),
        "tap {t} left behind"
    );
}

#[test]
fn bad_socket_options_are_refused() {
    refused(&["-netdev", "socket,id=s0"], &["s0"]);
    refused(
        &[
            "-netdev",
            "socket,id=s1,listen=127.0.0.1:1,connect=127.0.0.1:2",
        ],
        &["s1"],
    );
    refused(
        &["-netdev", "socket,id=s2,udp=127.0.0.1:9"],
        &["s2", "localaddr"],
    );
    refused(
        &["-netdev", "socket,id=s3,mcast=10.1.2.3:5000"],
        &["s3", "10.1.2.3"],
    );
    refused(&["-netdev", "socket,id=s4,listen=nonsense"], &["s4"]);
    refused(
        &["-netdev", "hubport,id=h,hubid=0,netdev=nosuch"],
        &["h", "nosuch"],
    );
}

#[test]
fn netdev_that_cannot_open_fails_startup_and_earlier_ports_go() {
    // Nothing listens on the connect= port; the tap made before it must not survive.
    let t = unique("pco");
    let closed = free_tcp_port();
    let err = refused(
        &[
            "-netdev",
            &format!("tap,id=t0,ifname={t},script=no,downscript=no"),
            "-netdev",
            &format!("socket,id=conn1,connect=127.0.0.1:{closed}"),
        ],
        &["conn1"],
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(
        wait_until(Duration::from_secs(10), || !link_exists(&t)),
        "tap {t} left behind after a failed start"
    );
    // listen= on a port already listened on.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    refused(
        &[
            "-netdev",
            &format!("socket,id=lis2,listen=127.0.0.1:{port}"),
        ],
        &["lis2"],
    );
    // udp= with a local address already taken.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    refused(
        &[
            "-netdev",
            &format!("socket,id=udp3,udp=127.0.0.1:9,localaddr=127.0.0.1:{port}"),
        ],
        &["udp3"],
    );
    // fd= naming a descriptor the daemon does not have.
    refused(&["-netdev", "socket,id=fd4,fd=77"], &["fd4"]);
    refused(&["-netdev", "tap,id=fd5,fd=78"], &["fd5"]);
    // script= that does not exist.
    let t = unique("pcs");
    refused(
        &[
            "-netdev",
            &format!("tap,id=scr6,ifname={t},script=/nonexistent/ifup,downscript=no"),
        ],
        &["scr6", "/nonexistent/ifup"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || !link_exists(&t)),
        "tap {t} left behind after a failed script"
    );
}

#[test]
fn startup_lines_describe_the_configuration() {
    let d = Args::new()
        .opt("-pool-size", "300")
        .opt("-max-frame", "1600")
        .opt("-poll-us", "20")
        .netdev("hubport,id=h0,hubid=0")
        .start();
    let err = d.stderr_text();
    assert!(err.contains("pollswitch: pool of 300 buffers"), "{err}");
    assert!(err.contains("max frame 1600"), "{err}");
    assert!(err.contains("poll-us 20"), "{err}");
    assert!(
        err.contains("pollswitch: ready (1 netdev(s), 1 worker(s))"),
        "{err}"
    );
    let out = d.stop_clean();
    assert!(
        out.contains("pollswitch: pool: 300 of 300 buffers free"),
        "{out}"
    );
}

#[test]
fn defaults_start_and_stop_cleanly() {
    // No options at all but -poll-us 0 (no busy polling on a 2-core machine): the
    // default pool, default placement, no ports.
    let d = Args::bare().opt("-poll-us", "0").start();
    assert!(
        d.stderr_text().contains("pool of 16384 buffers"),
        "{}",
        d.stderr_text()
    );
    assert!(
        d.stderr_text().contains("max frame 9216"),
        "{}",
        d.stderr_text()
    );
    d.stop_clean();
}

#[test]
fn sigint_stops_like_sigterm() {
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new().udp("a", 0, &mut a).udp("b", 0, &mut b).start();
    let f = frame(BCAST, mac(1), ETH_EXP, 1514, 1);
    a.send(&f);
    expect_frame(&b, &f, "a to b");
    assert!(run("kill", &["-INT", &d.pid().to_string()])
        .status
        .success());
    assert!(
        d.wait_for_stderr("buffers free", Duration::from_secs(10)),
        "no pool line after SIGINT:\n{}",
        d.stderr_text()
    );
    // Reap it (a TERM to a process already exiting changes nothing).
    let (status, err) = d.stop();
    assert_clean_exit(status, &err);
}

#[test]
fn stop_during_traffic_returns_every_buffer() {
    // SIGTERM while frames are still flowing in both directions: buffers in rings,
    // in flight in the kernel, or waiting in ports must all come back.
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .opt("-poll-us", "20")
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    let pid = d.pid().to_string();
    let f = frame(BCAST, mac(1), ETH_EXP, 1514, 1);
    let g = frame(BCAST, mac(2), ETH_EXP, 9000, 2);
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        run("kill", &["-TERM", &pid]);
    });
    let deadline = std::time::Instant::now() + Duration::from_millis(600);
    while std::time::Instant::now() < deadline {
        for _ in 0..16 {
            a.send(&f);
            b.send(&g);
        }
        std::thread::sleep(Duration::from_millis(1));
        let _ = a.drain(Duration::from_micros(100));
        let _ = b.drain(Duration::from_micros(100));
    }
    stopper.join().unwrap();
    assert!(
        d.wait_for_stderr("buffers free", Duration::from_secs(10)),
        "no pool line after SIGTERM:\n{}",
        d.stderr_text()
    );
    let (status, err) = d.stop();
    assert_clean_exit(status, &err);
}

#[test]
fn paths_may_be_any_bytes_other_values_must_be_utf8() {
    use std::os::unix::ffi::OsStrExt;
    // A unix socket path that is not UTF-8 is legal, and QEMU listens on it: so do we.
    let dir = tests::TempDir::new();
    let mut path = dir.path().as_os_str().as_bytes().to_vec();
    path.extend_from_slice(b"/qmp-\xff\xfe.sock");
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&path));
    let mut spec = b"unix:".to_vec();
    spec.extend_from_slice(path.as_os_str().as_bytes());
    spec.extend_from_slice(b",server=on,wait=off");
    let mut child = std::process::Command::new(tests::bin_path("pollswitch"))
        .args(["-cores", "0", "-poll-us", "0", "-pool-size", "512", "-qmp"])
        .arg(std::ffi::OsStr::from_bytes(&spec))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = None;
    wait_until(Duration::from_secs(10), || {
        c = tests::QmpClient::connect_unix_negotiated(&path).ok();
        c.is_some()
    });
    let mut c = c.expect("QMP on the non-UTF-8 path");
    c.execute_ok("quit", serde_json::json!({}));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!path.exists(), "the socket is removed at exit");
    // Anything that is not a path must be UTF-8: refused with its position, no panic.
    let bad = std::ffi::OsStr::from_bytes(b"hubport,id=h\xff,hubid=0");
    let out = std::process::Command::new(tests::bin_path("pollswitch"))
        .args(["-cores", "0", "-netdev"])
        .arg(bad)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("-netdev hubport,id=h\\xff,hubid=0: not valid UTF-8"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A QMP greeting read from a fresh connection to `path` (retrying while the daemon
/// starts), then `qmp_capabilities`.
fn qmp_at(path: &std::path::Path) -> tests::QmpClient {
    let mut c = None;
    wait_until(Duration::from_secs(10), || {
        c = tests::QmpClient::connect_unix_negotiated(path).ok();
        c.is_some()
    });
    c.unwrap_or_else(|| panic!("no QMP at {}", path.display()))
}

#[test]
fn libvirts_monitor_chardev_passed_as_a_descriptor() {
    use std::os::fd::AsRawFd;
    let dir = tests::TempDir::new();
    let path = dir.join("monitor.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = l.as_raw_fd();
    // SAFETY: clears FD_CLOEXEC on our own live descriptor so the daemon inherits it
    // under the same number, as libvirt passes QEMU its monitor.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let chardev = format!("socket,id=charmonitor,fd={fd},server=on,wait=off");
    let d = Args::new()
        .opt("-chardev", &chardev)
        .opt("-mon", "chardev=charmonitor,id=monitor,mode=control")
        .opt("-name", "guest=sw1,debug-threads=on")
        .start();
    drop(l);
    let mut q = qmp_at(&path);
    assert_eq!(
        q.execute_ok("query-name", serde_json::json!({})),
        serde_json::json!({"name": "sw1"})
    );
    drop(q);
    d.stop_clean();
}

#[test]
fn chardev_and_mon_forms_and_their_refusals() {
    let dir = tests::TempDir::new();
    let path = dir.join("m.sock");
    let chardev = format!("socket,id=m0,path={},server=on,wait=off", path.display());
    let d = Args::new()
        .opt("-chardev", &chardev)
        .opt("-mon", "chardev=m0,mode=control,pretty=on")
        .start();
    // Pretty replies, as QEMU prints them.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"return\": {\r\n    }\r\n}\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("{\r\n    \"QMP\": {\r\n"));
    drop(s);
    d.stop_clean();
    for (args, needle) in [
        (vec!["-mon", "chardev=nope"], "chardev \"nope\" not found"),
        (
            vec![
                "-chardev",
                "socket,id=c,path=/tmp/x.sock",
                "-mon",
                "chardev=c",
            ],
            "only on listening chardevs",
        ),
        (
            vec!["-chardev", "pty,id=p"],
            "backend 'pty' is not supported",
        ),
        (vec!["-mon", "chardev=c,mode=readline"], "only QMP monitors"),
        (vec!["-msg", "timestamp=maybe"], "'timestamp' expects"),
        (vec!["-name", "a,bogus=1"], "Invalid parameter 'bogus'"),
    ] {
        refused(&args, &[needle]);
    }
}

#[test]
fn daemonize_pidfile_and_log_file() {
    let dir = tests::TempDir::new();
    let sock = dir.join("q.sock");
    let pidfile = dir.join("ps.pid");
    let log = dir.join("ps.log");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = Args::new()
        .strs()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    args.extend(
        [
            "-daemonize",
            "-pidfile",
            pidfile.to_str().unwrap(),
            "-D",
            log.to_str().unwrap(),
            "-qmp",
            &qmp,
            "-netdev",
            "hubport,id=h0,hubid=0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    // The command returns once the daemon is ready, with status 0.
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new(tests::bin_path("pollswitch"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(10));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "daemon {pid} runs"
    );
    let mut q = tests::QmpClient::connect_unix_negotiated(&sock).expect("QMP of the daemon");
    q.execute_ok(
        "netdev_add",
        serde_json::json!({"id": "h1", "type": "hubport", "hubid": 0}),
    );
    assert_eq!(
        q.execute_ok("query-name", serde_json::json!({})),
        serde_json::json!({})
    );
    q.execute_ok("quit", serde_json::json!({}));
    assert!(
        wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "daemon {pid} left after quit"
    );
    assert!(!pidfile.exists(), "pidfile removed at exit");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("netdev h1 added (hubport)"), "{text}");
    assert!(text.contains("QMP client"), "{text}");
    // Timestamps by default (RFC 3339, e.g. 2026-12-02T03:04:05.123456Z).
    let first = text.lines().next().unwrap();
    assert!(
        first.len() > 20 && first.as_bytes()[4] == b'-' && first.as_bytes()[10] == b'T',
        "{first}"
    );
    // A daemon that cannot start still reports why, and the command fails.
    let out = std::process::Command::new(tests::bin_path("pollswitch"))
        .args(["-daemonize", "-cores", "0", "-netdev", "tap,id=t,fd=999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("-netdev t"), "{}", stderr(&out));
}

#[test]
fn sigterm_while_frames_flow_stops_clean_with_every_buffer_back() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new().udp("a", 0, &mut a).udp("b", 0, &mut b).start();
    common::until_path_works(&a, &b, common::probe, "a to b");
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        let (stop2, got2, b) = (stop.clone(), got.clone(), &b);
        s.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if b.recv_timeout(Duration::from_millis(50)).is_some() {
                    got2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let stop3 = stop.clone();
        let a = &a;
        s.spawn(move || {
            // ~10 kpps of 60-byte frames, until told to stop (bounded: 30 s at most).
            let t0 = std::time::Instant::now();
            let mut i = 0u32;
            while !stop3.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                a.send(&frame(BCAST, mac(1), ETH_EXP, 60, i as u8));
                i += 1;
                if i.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        // The premise: traffic is flowing when the signal comes.
        assert!(
            wait_until(Duration::from_secs(5), || got.load(Ordering::Relaxed)
                > 2000),
            "traffic flows before the stop"
        );
        let before = got.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            got.load(Ordering::Relaxed) > before,
            "still flowing at the signal"
        );
        let (status, err) = d.stop();
        stop.store(true, Ordering::Relaxed);
        // Exit status 0 and every buffer back, in the middle of the traffic.
        assert_clean_exit(status, &err);
    });
}

#[test]
fn a_netdev_that_cannot_open_is_the_first_line() {
    let out = Daemon::run_to_exit(&["-cores", "0", "-netdev", "tap,id=t9,fd=999"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("pollswitch: -netdev t9: "),
        "the error comes before any startup line: {err}"
    );
}
