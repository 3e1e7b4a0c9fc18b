// Throwaway: not committed. Interleaved A/B of XDP objects.
use aya::programs::{TestRun, TestRunOptions};
use lb_ebpf::prog;
use lb_tests::{
    packet::{Frame, ACK, SYN},
    xdp_fixture::{fixture, CLIENT, WEB},
};
use std::net::Ipv4Addr;

fn run(fx: &lb_tests::xdp_fixture::Fixture, p: &str, frame: &[u8], ing: u32) -> u64 {
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ing.to_ne_bytes());
    let r = fx
        .dp
        .program_named(p)
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .unwrap();
    r.duration.as_nanos() as u64
}
fn q(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort();
    (v[0], v[v.len() / 4], v[v.len() / 2])
}

fn main() {
    let objs: Vec<String> = std::env::var("OBJS")
        .unwrap()
        .split(',')
        .map(String::from)
        .collect();
    let syn_mode = std::env::var("SYNM").is_ok();
    std::thread::spawn(move || {
        let mut fxs = Vec::new();
        for o in &objs {
            unsafe { std::env::set_var("LB_EBPF_OBJECT", o) };
            fxs.push(fixture("probe", |_| {}));
        }
        let syn = Frame::tcp((CLIENT, 1000), (WEB, 80), SYN).build();
        let mut est = Frame::tcp((CLIENT, 1000), (WEB, 80), ACK);
        est.payload = vec![0x55; 64];
        let est = est.build();
        for fx in &fxs {
            let _ = run(fx, prog::LB, &syn, fx.lbt0);
        }
        let mut samples = vec![Vec::new(); fxs.len()];
        let mut floor = Vec::new();
        let mut i = vec![0usize; fxs.len()];
        for _round in 0..40 {
            for (k, fx) in fxs.iter().enumerate() {
                for _ in 0..1500 {
                    let d = if syn_mode {
                        let n = i[k];
                        let addr = Ipv4Addr::from(u32::from(CLIENT) + (n / 40_000) as u32 * 256);
                        let port = 20_000 + (n % 40_000) as u16;
                        i[k] += 1;
                        run(
                            fx,
                            prog::LB,
                            &Frame::tcp((addr, port), (WEB, 80), SYN).build(),
                            fx.lbt0,
                        )
                    } else {
                        run(fx, prog::LB, &est, fx.lbt0)
                    };
                    samples[k].push(d);
                }
                if k == 0 {
                    for _ in 0..500 {
                        floor.push(run(fx, prog::FLOOR, &syn, fx.lbt0));
                    }
                }
            }
        }
        println!("floor {:?}", q(floor));
        for (o, s) in objs.iter().zip(samples) {
            println!("{o}: {:?}", q(s));
        }
    })
    .join()
    .unwrap();
}
