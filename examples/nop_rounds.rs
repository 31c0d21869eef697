//! 2000 rounds of 32 add_nop + wait until reaped: for instruction counts.
fn main() {
    let ring = ringfence::URingContext::new(128, None).unwrap();
    for round in 0..std::env::args().nth(1).map_or(2000, |a| a.parse().unwrap()) {
        for i in 0..32 {
            ring.add_nop(round * 32 + i).unwrap();
        }
        let mut reaped = 0;
        while reaped < 32 {
            for (_, r) in ring.wait().unwrap() {
                r.unwrap();
                reaped += 1;
            }
        }
    }
}
