//! Merkle proofs on a 10-million-entry tenant: generation and verification, beside the raw
//! SHA-256 work a verifier cannot avoid (one node hash per proof level) in the same run.
//!
//! Run: `cargo bench -p sos-audit --all-features --bench merkle -- --warm-up-time 1 --measurement-time 3`
//! (`SOS_BENCH_LEAVES` overrides the tree size).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use sos_audit::merkle::{MemoryTree, SubtreeHashes, inclusion_proof, node_hash, verify_inclusion};

fn leaves() -> u64 {
    std::env::var("SOS_BENCH_LEAVES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000)
}

fn bench(c: &mut Criterion) {
    let size = leaves();
    let started = Instant::now();
    let mut tree = MemoryTree::new();
    for i in 0..size {
        tree.push(&i.to_be_bytes());
    }
    let build = started.elapsed();
    let root = tree.root();
    println!(
        "built a tree of {size} leaves in {build:.2?} ({:.0} leaves/s)",
        size as f64 / build.as_secs_f64()
    );

    let mut index = 0x9e37_79b9_u64;
    let mut next_index = move || {
        // A cheap LCG spreads the probed leaves over the whole tree.
        index = index.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        index % size
    };
    let mut group = c.benchmark_group("merkle");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    group.bench_function("inclusion_proof_generate", |b| {
        b.iter(|| black_box(inclusion_proof(&tree, next_index(), size).expect("in range")))
    });
    let probe = next_index();
    let proof = inclusion_proof(&tree, probe, size).expect("in range");
    let leaf = tree.subtree(0, probe).expect("leaf");
    group.bench_function("inclusion_proof_verify", |b| {
        b.iter(|| verify_inclusion(black_box(&leaf), probe, size, black_box(&proof), &root).expect("valid"))
    });
    // The floor: the same number of node hashes, with nothing else.
    group.bench_function("raw_sha256_same_node_count", |b| {
        b.iter(|| {
            let mut acc = leaf;
            for sibling in &proof {
                acc = node_hash(black_box(&acc), sibling);
            }
            black_box(acc)
        })
    });
    group.finish();

    // A plain summary beside the goals, for BENCHMARKS.md.
    let runs = 20_000;
    let started = Instant::now();
    for _ in 0..runs {
        black_box(inclusion_proof(&tree, next_index(), size).expect("in range"));
    }
    let generate = started.elapsed() / runs;
    let started = Instant::now();
    for _ in 0..runs {
        verify_inclusion(&leaf, probe, size, &proof, &root).expect("valid");
    }
    let verify = started.elapsed() / runs;
    let started = Instant::now();
    for _ in 0..runs {
        let mut acc = leaf;
        for sibling in &proof {
            acc = node_hash(&acc, sibling);
        }
        black_box(acc);
    }
    let raw = started.elapsed() / runs;
    println!(
        "tree of {size}: proof of {} hashes; generate {generate:?} (goal < 1 ms), verify {verify:?} (goal < 50 µs), raw SHA-256 of the same {} nodes {raw:?} (verify/raw = {:.2})",
        proof.len(),
        proof.len(),
        verify.as_secs_f64() / raw.as_secs_f64()
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
