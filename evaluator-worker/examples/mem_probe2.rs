// Temporary probe (to be deleted).
use kiln_protocol::memory::MemoryTransport;
use kiln_protocol::{Route, Transport};
fn rss() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .to_string()
}
fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = MemoryTransport::new();
        for i in 0..2000 {
            let s = t
                .subscribe(&Route::IfdReply(uuid::Uuid::new_v4()))
                .await
                .unwrap();
            drop(s);
            if i % 200 == 199 {
                eprintln!("{i} {}", rss());
            }
        }
    });
}
