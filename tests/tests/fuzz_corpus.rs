//! The fuzz targets (`switch::fuzzing`, `backends::fuzzing`, `ctl::fuzzing`) on stable,
//! in CI: every input of the committed corpora (`fuzz/corpus/TARGET/`: what libFuzzer
//! kept, minimised) and every input that ever failed a target (`fuzz/regressions/
//! TARGET/`, named for what it found), then a bounded random
//! run — corpus inputs mutated by a seeded generator for about a second per target. The
//! coverage-guided runs are `fuzz/`'s, on nightly (see fuzz/README.md and
//! RELIABILITY.md); this is not one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("qmp", ctl::fuzzing::qmp),
    ("cli", ctl::fuzzing::cli),
    ("memif_msg", backends::fuzzing::memif_msg),
    ("l2tpv3", backends::fuzzing::l2tpv3),
    ("vxlan", backends::fuzzing::vxlan),
    ("vde", backends::fuzzing::vde),
    ("stream", backends::fuzzing::stream),
    ("memif_ring", backends::fuzzing::memif_ring),
    ("vhost_msg", backends::fuzzing::vhost_msg),
    ("virtio_chain", backends::fuzzing::virtio_chain),
    ("vlan", switch::fuzzing::vlan),
    ("fdb", switch::fuzzing::fdb),
    ("gso", switch::fuzzing::gso),
];

/// How long the random run of one target lasts.
const RANDOM_FOR: Duration = Duration::from_millis(1000);

/// The inputs in `fuzz/KIND/TARGET` (none when the folder does not exist).
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| {
            let p = e.expect("corpus entry").path();
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect();
    v.sort();
    v
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    inputs("corpus", target)
}

/// xorshift64*: reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `base` with a few random edits: byte flips, insertions, deletions, splices of
    /// interesting values.
    fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
        let mut d = base.to_vec();
        for _ in 0..=self.below(8) {
            let at = self.below(d.len() + 1);
            match self.below(5) {
                0 if !d.is_empty() => {
                    let i = at.min(d.len() - 1);
                    d[i] ^= 1 << self.below(8);
                }
                1 => d.insert(at, self.next() as u8),
                2 if at < d.len() => {
                    d.remove(at);
                }
                3 => {
                    let v = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', b',', b'\0'][self.below(8)];
                    d.insert(at, v);
                }
                _ => {
                    let n = self.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                    d.splice(at..at, bytes);
                }
            }
        }
        d
    }
}

#[test]
fn every_committed_corpus_input_passes_its_target() {
    for (name, target) in TARGETS {
        let corpus = corpus(name);
        assert!(!corpus.is_empty(), "no corpus for fuzz target {name}");
        for (path, data) in corpus.into_iter().chain(inputs("regressions", name)) {
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "fuzz target {name} failed on {}", path.display());
        }
    }
}

#[test]
fn a_bounded_random_run_of_every_target_finds_nothing() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut total = 0u64;
    for (name, target) in TARGETS {
        let bases = corpus(name);
        let mut rng = Rng(seed ^ name.len() as u64);
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < RANDOM_FOR {
            let base = &bases[rng.below(bases.len())].1;
            let data = rng.mutate(base);
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(
                r.is_ok(),
                "fuzz target {name} failed (seed {seed:#x}, input {n}): {data:02x?}"
            );
            n += 1;
        }
        eprintln!("fuzz target {name}: {n} random inputs");
        total += n;
    }
    assert!(total > 1000, "only {total} inputs ran");
}
