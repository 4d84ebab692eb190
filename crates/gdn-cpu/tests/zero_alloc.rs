//! Proves that a decode step of the cpu backend performs no heap allocation, on any thread:
//! a counting global allocator wraps the system one, and this binary runs without the test
//! harness (`harness = false`) so nothing else allocates while we count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use hybrid_gdn::conformance::{random_constants, random_inputs};
use hybrid_gdn::{BackendOptions, BatchMember, GdnBackend, LayerSpec, TokenInputs};
use hybrid_gdn_cpu::CpuKernel;

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn main() {
    // The counter itself must see allocations, or a pass below would prove nothing.
    let probe = ALLOCATIONS.load(Ordering::SeqCst);
    let boxed = std::hint::black_box(Box::new([0u8; 64]));
    drop(boxed);
    assert!(
        ALLOCATIONS.load(Ordering::SeqCst) > probe,
        "counting allocator is not installed"
    );

    let spec = LayerSpec::QWEN3_NEXT;
    for threads in [1, 2, 4] {
        let options = BackendOptions::default().with_threads(threads);
        let mut backend = CpuKernel::backend(&options).expect("cpu backend");
        for layer in 0..2 {
            backend
                .load_layer(layer, spec, &random_constants(&spec, layer as u64))
                .expect("load");
        }
        let slot = backend.alloc_slot().expect("slot");
        let (x, a, b) = random_inputs(&spec, 1, 7);
        let inputs = TokenInputs {
            mixed_qkv: &x,
            a: &a,
            b: &b,
        };
        let mut out = vec![0.0f32; spec.value_dim()];
        // Warm-up: first use of the pool and of every code path.
        backend.step(0, slot, inputs, &mut out).expect("step");

        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..50 {
            for layer in 0..2 {
                backend.step(layer, slot, inputs, &mut out).expect("step");
            }
        }
        let during = ALLOCATIONS.load(Ordering::SeqCst) - before;
        // Prefill reuses the same scratch: also allocation-free.
        let (px, pa, pb) = random_inputs(&spec, 100, 8);
        let mut pout = vec![0.0f32; 100 * spec.value_dim()];
        let before_prefill = ALLOCATIONS.load(Ordering::SeqCst);
        backend
            .prefill(
                1,
                slot,
                TokenInputs {
                    mixed_qkv: &px,
                    a: &pa,
                    b: &pb,
                },
                &mut pout,
            )
            .expect("prefill");
        let during_prefill = ALLOCATIONS.load(Ordering::SeqCst) - before_prefill;

        // A batched decode step of three sequences: one call per layer, also allocation-free
        // once the batch's scratch has grown to it (the warm-up call).
        let batch_slots = [
            slot,
            backend.alloc_slot().expect("slot"),
            backend.alloc_slot().expect("slot"),
        ];
        let mut outs = [
            vec![0.0f32; spec.value_dim()],
            vec![0.0f32; spec.value_dim()],
            vec![0.0f32; spec.value_dim()],
        ];
        let mut batch_step = |backend: &mut hybrid_gdn::Checked<CpuKernel>, layer: usize| {
            let [o0, o1, o2] = &mut outs;
            let mut members = [
                BatchMember {
                    slot: batch_slots[0],
                    inputs,
                    out: o0,
                },
                BatchMember {
                    slot: batch_slots[1],
                    inputs,
                    out: o1,
                },
                BatchMember {
                    slot: batch_slots[2],
                    inputs,
                    out: o2,
                },
            ];
            backend.run_batch(layer, &mut members).expect("batch");
        };
        batch_step(&mut backend, 0);
        let before_batch = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..20 {
            for layer in 0..2 {
                batch_step(&mut backend, layer);
            }
        }
        let during_batch = ALLOCATIONS.load(Ordering::SeqCst) - before_batch;
        println!(
            "zero_alloc: {threads} thread(s): {during} allocations in 100 decode steps, \
             {during_prefill} in a 100-token prefill, {during_batch} in 40 batched steps of 3"
        );
        if during != 0 || during_prefill != 0 || during_batch != 0 {
            eprintln!("FAILED: the cpu backend allocated on the per-token path");
            std::process::exit(1);
        }
    }
    println!("zero_alloc: ok");
}
