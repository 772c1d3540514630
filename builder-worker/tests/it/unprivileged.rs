//! The sandbox as an ordinary user (unprivileged user namespaces). When run
//! as root, the test re-runs itself as `nobody` through `setpriv`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_builder::builder::{BuildOptions, Builder, BuilderConfig};
use kiln_builder::recipe::{OutputRecipe, Recipe};

const INNER: &str = "KILN_UNPRIVILEGED_DIR";
const BUSYBOX: &str = "/nix/store/00000000000000000000000000000000-busybox";
const OUT: &str = "/nix/store/11111111111111111111111111111111-id";

async fn build_in(dir: &Path) {
    let bb = dir.join("busybox");
    std::fs::create_dir_all(bb.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", bb.join("bin/busybox")).unwrap();
    let builder = Builder::new(BuilderConfig::new(dir.join("scratch")));
    let b = format!("{BUSYBOX}/bin/busybox");
    let recipe = Recipe {
        outputs: [(
            "out".to_string(),
            OutputRecipe {
                path: OUT.into(),
                fixed: None,
            },
        )]
        .into(),
        builder: b.clone(),
        args: vec![
            "sh".into(),
            "-c".into(),
            format!("{{ {b} id -u; {b} id -g; {b} hostname; {b} cat /etc/group; }} > $out"),
        ],
        env: [("out".to_string(), OUT.to_string())].into(),
        system: "x86_64-linux".into(),
    };
    let inputs: BTreeMap<String, PathBuf> = [(BUSYBOX.to_string(), bb)].into();
    let opts = BuildOptions {
        out_dir: dir.join("out"),
        ..Default::default()
    };
    let res = builder
        .build_recipe(
            "/nix/store/22222222222222222222222222222222-id.drv",
            &recipe,
            &inputs,
            &opts,
        )
        .await
        .unwrap();
    let out = std::fs::read_to_string(&res.outputs["out"].location).unwrap();
    assert_eq!(
        out,
        "1000\n100\nlocalhost\nroot:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n"
    );
    kiln_builder::rootfs::remove_tree(&dir.join("out")).unwrap();
}

#[tokio::test]
async fn builds_as_an_ordinary_user() {
    if !Path::new("/bin/busybox").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but /bin/busybox is missing"
        );
        return;
    }
    if let Ok(dir) = std::env::var(INNER) {
        assert_ne!(unsafe { libc::geteuid() }, 0);
        build_in(Path::new(&dir)).await;
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        let t = tempfile::tempdir().unwrap();
        build_in(t.path()).await;
        return;
    }
    // Root: run this very test again as nobody.
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "unprivileged::builds_as_an_ordinary_user",
            "--test-threads=1",
        ])
        .env(INNER, t.path())
        .env("TMPDIR", t.path())
        .output()
        .expect("setpriv (util-linux) is needed to test as an ordinary user when running as root");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "as nobody: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kiln_builder::rootfs::remove_tree(t.path()).unwrap();
}
