//! The sandbox on its own: namespaces, identity, files and isolation.

use std::path::{Path, PathBuf};

use kiln_builder::rootfs;
use kiln_builder::run::{supervise, Supervision};
use kiln_builder::sandbox::{spawn, SandboxSpec};

fn busybox() -> Option<PathBuf> {
    let p = Path::new("/bin/busybox");
    p.exists().then(|| p.to_path_buf())
}

#[tokio::test]
async fn shell_runs_as_nix_build_user() {
    let Some(bb) = busybox() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "busybox is required under CI"
        );
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let bbdir = t.path().join("busybox/bin");
    std::fs::create_dir_all(&bbdir).unwrap();
    std::fs::copy(&bb, bbdir.join("busybox")).unwrap();
    let store_bb = "/nix/store/00000000000000000000000000000000-busybox";
    let layout = rootfs::Layout {
        root: &t.path().join("root"),
        work: &t.path().join("work"),
    };
    let root = rootfs::prepare(
        layout,
        "/nix/store",
        [(store_bb, t.path().join("busybox").as_path())],
        false,
    )
    .unwrap();
    let prog = format!("{store_bb}/bin/busybox");
    let spec = SandboxSpec {
        root: root.root.clone(),
        binds: root.binds.clone(),
        host_user: None,
        private_network: true,
        shm_size: "50%".into(),
        cwd: "/build".into(),
        program: prog.clone().into_bytes(),
        args: vec![prog.into_bytes(), b"sh".to_vec(), b"-c".to_vec(), format!("B={store_bb}/bin/busybox; $B id -u; $B id -g; $B hostname; $B pwd; $B ls /; $B ls /dev | $B grep -v kvm; echo $$").into_bytes()],
        env: vec![b"PATH=/path-not-set".to_vec()],
    };
    let start = std::time::Instant::now();
    let child = spawn(&spec).unwrap();
    eprintln!("spawn took {:?}", start.elapsed());
    let out = supervise(child, &Supervision::default()).await.unwrap();
    let log = String::from_utf8_lossy(&out.log).into_owned();
    eprintln!("{log}");
    assert_eq!(out.result, Ok(0), "{log}");
    assert_eq!(log, "1000\n100\nlocalhost\n/build\nbuild\ndev\netc\nnix\nproc\ntmp\nfd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\n1\n");
    rootfs::remove_tree(t.path()).unwrap();
}
