// Temporary probe (to be deleted).
use kiln_evaluator::run::{eval_request, Request};
fn rss() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .to_string()
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let expr = args[1].clone();
    let n: usize = args[2].parse().unwrap();
    let eval = args.get(3).is_some();
    for i in 0..n {
        let req = Request {
            expr: Some(expr.clone()),
            cwd: "/tmp/kiln-mem/set".into(),
            eval,
            strict: eval,
            ..Default::default()
        };
        let r = kiln_evaluator::with_big_stack(move || eval_request(&req)).unwrap();
        if let Err(e) = &r {
            eprintln!("{e}");
        }
        if i % 10 == 9 {
            eprintln!("{i} {} {}", rss(), r.map(|s| s.len()).unwrap_or(0));
        }
    }
}
