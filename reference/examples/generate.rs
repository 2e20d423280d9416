//! Runs the `mini` DeepSeek-V3.2 configuration on seeded random weights: prefills a
//! prompt in chunks, decodes greedily, and reports how many keys each attention read
//! with DeepSeek Sparse Attention against dense causal attention.
//!
//! The weights are random, so expect DSA and dense to pick different next tokens in most
//! steps: a trained indexer learns to rank the keys attention will weight most, while a
//! random one ranks them arbitrarily, so the top-k drops keys that dense attention still
//! counts, and random logits are nearly flat, so any change flips the argmax. The
//! agreement figure only becomes meaningful with trained weights; what this example
//! shows is the mechanics (caches, indexer, top-k, sparse attention) and the key counts.
//!
//! ```text
//! cargo run --release -p dsa-reference --example generate -- [--prompt N] [--gen N]
//!     [--cache fp8|bf16] [--chunk N] [--seed N] [--topk N]
//! ```

use dsa_reference::{CacheDtype, Config, ForwardOptions, ForwardStats, KvCache, Model, Sequence};
use std::io::Write;
use std::time::Instant;

struct Args {
    prompt: usize,
    gen: usize,
    cache: CacheDtype,
    chunk: usize,
    seed: u64,
    topk: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        prompt: 2048,
        gen: 16,
        cache: CacheDtype::Fp8,
        chunk: 256,
        seed: 0,
        topk: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--prompt" => a.prompt = num(val()?)?,
            "--gen" => a.gen = num(val()?)?,
            "--chunk" => a.chunk = num(val()?)?.max(1),
            "--seed" => a.seed = num(val()?)? as u64,
            "--topk" => a.topk = Some(num(val()?)?),
            "--cache" => {
                a.cache = match val()?.as_str() {
                    "fp8" => CacheDtype::Fp8,
                    "bf16" => CacheDtype::Bf16,
                    other => return Err(format!("--cache must be fp8 or bf16, got {other}")),
                }
            }
            "-h" | "--help" => {
                return Err("usage: generate [--prompt N] [--gen N] [--cache fp8|bf16] [--chunk N] [--seed N] [--topk N]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.prompt == 0 {
        return Err("--prompt must be at least 1".into());
    }
    Ok(a)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum();
    dot / (na * nb).sqrt()
}

/// A fixed shuffle of the page ids, so the example exercises real block tables.
fn shuffled_pages(n: usize, seed: u64) -> Vec<i32> {
    let mut p: Vec<i32> = (0..n as i32).collect();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.swap(i, (x % (i as u64 + 1)) as usize);
    }
    p
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut cfg = Config::mini();
    if let Some(k) = args.topk {
        cfg.index_topk = k.max(1);
    }
    let total = args.prompt + args.gen;
    if total > cfg.max_position_embeddings {
        eprintln!(
            "prompt + gen = {total} exceeds max_position_embeddings {}",
            cfg.max_position_embeddings
        );
        std::process::exit(2);
    }
    println!(
        "mini DeepSeek-V3.2: hidden {}, {} layers ({} dense), {} heads, {} experts (top {}), \
         indexer {}x{} top-{}, vocab {}, {:?} MLA cache",
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.first_k_dense_replace,
        cfg.num_attention_heads,
        cfg.n_routed_experts,
        cfg.num_experts_per_tok,
        cfg.index_n_heads,
        cfg.index_head_dim,
        cfg.index_topk,
        cfg.vocab_size,
        args.cache
    );
    let t0 = Instant::now();
    print!("building seeded weights (seed {}) ... ", args.seed);
    std::io::stdout().flush().ok();
    let model = match Model::seeded(cfg.clone(), args.seed) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cannot build the model: {e}");
            std::process::exit(1);
        }
    };
    println!("{:.1} s", t0.elapsed().as_secs_f64());

    let pages = total.div_ceil(64);
    let mut cache = KvCache::new(&cfg, args.cache, pages);
    let mut seq = Sequence::new(shuffled_pages(pages, args.seed ^ 1));
    let prompt: Vec<u32> = (0..args.prompt)
        .map(|i| ((i as u64 * 2_654_435_761 + args.seed) % cfg.vocab_size as u64) as u32)
        .collect();

    // Prefill in chunks; only the last chunk's last logits are needed.
    let t1 = Instant::now();
    let mut pre = ForwardStats::default();
    let mut logits = Vec::new();
    for (ci, chunk) in prompt.chunks(args.chunk).enumerate() {
        let opts = ForwardOptions {
            all_logits: false,
            ..Default::default()
        };
        let (l, s) = match model.forward(chunk, &mut cache, &mut seq, &opts) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("prefill failed: {e}");
                std::process::exit(1);
            }
        };
        pre += s;
        logits = l;
        println!(
            "  prefill chunk {:>3}: {:>5}/{} tokens, {:>6.1} s",
            ci + 1,
            seq.len,
            args.prompt,
            t1.elapsed().as_secs_f64()
        );
    }
    let pre_t = t1.elapsed().as_secs_f64();
    println!(
        "prefill {} tokens in {:.1} s ({:.0} tok/s); attention keys read: DSA {} vs dense {} ({:.1}x fewer); indexer scored {} keys",
        args.prompt,
        pre_t,
        args.prompt as f64 / pre_t,
        pre.keys_attended,
        pre.keys_causal,
        pre.keys_causal as f64 / pre.keys_attended.max(1) as f64,
        pre.indexer_keys_scored
    );

    // Greedy decode.
    let mut next = argmax(&logits);
    let mut generated = Vec::new();
    let mut dec = ForwardStats::default();
    let t2 = Instant::now();
    let mut dense_keys = 0u64;
    let mut dense_time = 0f64;
    let mut agree = 0usize;
    for step in 0..args.gen {
        generated.push(next);
        // The same step with dense attention, on a copy of the state, for comparison.
        let (mut c2, mut s2) = (cache.clone(), seq.clone());
        let dense_opts = ForwardOptions {
            sparse: false,
            all_logits: false,
            ..Default::default()
        };
        let td = Instant::now();
        let dense = model.forward(&[next], &mut c2, &mut s2, &dense_opts);
        let td = td.elapsed().as_secs_f64();
        let ts = Instant::now();
        let (l, s) = match model.forward(&[next], &mut cache, &mut seq, &ForwardOptions::default())
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("decode failed: {e}");
                std::process::exit(1);
            }
        };
        let ts = ts.elapsed().as_secs_f64();
        dec += s;
        let layers = s.queries.max(1);
        let tok = argmax(&l);
        let (cos, dense_tok, dk) = match &dense {
            Ok((dl, ds)) => (cosine(&l, dl), argmax(dl), ds.keys_attended),
            Err(_) => (f64::NAN, u32::MAX, 0),
        };
        dense_keys += dk;
        dense_time += td;
        agree += usize::from(dense_tok == tok);
        println!(
            "  step {:>2}: pos {:>5} token {:>4} -> {:>4} | DSA {:>4} keys/layer {:>5.0} ms | dense {:>5} keys/layer {:>5.0} ms, picks {:>4}, logits cosine {:.4}",
            step + 1,
            seq.len - 1,
            next,
            tok,
            s.keys_attended / layers,
            ts * 1e3,
            dk / layers,
            td * 1e3,
            dense_tok,
            cos
        );
        next = tok;
    }
    let dec_t = t2.elapsed().as_secs_f64();
    println!("generated: {generated:?}");
    println!(
        "decode {} steps in {:.1} s ({:.1} s of it the dense comparison); attention keys read: DSA {} vs dense {} ({:.1}x fewer); same next token as dense in {}/{} steps",
        args.gen,
        dec_t,
        dense_time,
        dec.keys_attended,
        dense_keys,
        dense_keys as f64 / dec.keys_attended.max(1) as f64,
        agree,
        args.gen
    );
    println!(
        "note: the weights are random, so the indexer's choice is arbitrary and the logits \
         nearly flat: disagreement with dense attention is expected here and says nothing \
         about DSA with trained weights"
    );
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
}
