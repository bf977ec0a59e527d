//! `raftmq-lazyfs`: mounts a directory through [`raftmq_lazyfs::LazyFs`] until a signal.
//!
//! - SIGUSR1: power loss. Every write no sync covered is undone, then the filesystem unmounts
//!   and the process exits. Kill the processes using it first (SIGKILL), as a power cut would.
//! - SIGTERM or SIGINT: a clean unmount; everything written stays.
//!
//! Needs root (it mounts with mount(2); no libfuse or fusermount is involved).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use fuser::{Config, MountOption};
use raftmq_lazyfs::{LazyFs, Mounted};

#[derive(Parser)]
#[command(about = "A FUSE passthrough that loses every unsynced write on SIGUSR1 (a power loss)")]
struct Args {
    /// Where the files really live.
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount them.
    #[arg(long)]
    mount: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.backing).with_context(|| format!("creating {}", args.backing.display()))?;
    std::fs::create_dir_all(&args.mount).with_context(|| format!("creating {}", args.mount.display()))?;
    // The signals are taken by sigwait below; blocked before the session's threads start, so
    // that none of them gets one.
    // SAFETY: plain libc signal-set calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("cannot block signals");
        }
        set
    };
    let fs = LazyFs::new(&args.backing)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("raftmq-lazyfs".into()),
        MountOption::Subtype("raftmq-lazyfs".into()),
        MountOption::RW,
    ];
    let session = fuser::spawn_mount(Mounted(fs.clone()), &args.mount, &config)
        .with_context(|| format!("mounting {} (needs root and /dev/fuse)", args.mount.display()))?;
    println!(
        "raftmq-lazyfs: {} mounted over {}",
        args.mount.display(),
        args.backing.display()
    );
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: waits on the set blocked above.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        match sig {
            libc::SIGUSR1 => {
                let loss = fs.power_off();
                println!(
                    "raftmq-lazyfs: power off: {} files lost writes no sync covered ({} bytes restored, {} bytes cut); {} syncs seen",
                    loss.files,
                    loss.restored_bytes,
                    loss.truncated_bytes,
                    fs.syncs()
                );
                break;
            }
            _ => {
                println!("raftmq-lazyfs: unmounting (clean, nothing lost)");
                break;
            }
        }
    }
    session.umount_and_join().context("unmounting")?;
    Ok(())
}
