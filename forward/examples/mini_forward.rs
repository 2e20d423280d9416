//! The mini DeepSeek-V3.2 (the reference's `Config::mini()`: hidden 512, 4 layers, 16
//! heads, 32 experts top-4 + 1 shared, indexer 64 x 128 top-256, every per-head dimension
//! of the real model) run end to end on the GPU and on the CPU reference with the same
//! seeded weights: a batch of prompts of different lengths (the longest 512) prefilled,
//! then greedy decode steps; prints the per-layer agreement table, logits and greedy-token
//! agreement, and the decode step's time eagerly and from a CUDA graph.
//!
//! ```text
//! cargo run --release -p dsa-forward --example mini_forward [STEPS] [LEN...]
//! ```
//! cuBLAS is loaded at run time: put libcublas on the loader path.
use dsa_forward::compare;
use dsa_reference::Config;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let steps = args.first().copied().unwrap_or(16);
    let lens = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![512, 448, 300, 129]
    };
    let k = match compare::graph_ready_kernels() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("mini_forward needs a Hopper GPU and libcublas: {e}");
            std::process::exit(2);
        }
    };
    println!("{} ({} SMs)", k.device().name, k.device().sm_count);
    let t = std::time::Instant::now();
    let report = compare::run(k, &Config::mini(), 7, &lens, steps, 50, &mut |s| {
        println!("[{:6.1} s] {s}", t.elapsed().as_secs_f64())
    })?;
    println!("\n{report}");
    Ok(())
}
