//! The NoCloud seed disk cloud-init looks for: a small FAT filesystem
//! labelled `cidata` holding `meta-data` (the VM's stable instance-id and
//! its hostname), `user-data` and, if the definition has one,
//! `network-config`. Built with the `fatfs` crate in the scratch
//! directory, attached read-only as KubeVirt does.
//!
//! VMM thread, before the first boot.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

/// What goes on the seed disk.
pub struct Seed<'a> {
    pub instance_id: &'a str,
    pub hostname: &'a str,
    pub user_data: &'a str,
    pub network_data: Option<&'a str>,
}

impl Seed<'_> {
    fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.hostname
        )
    }
}

/// FAT12 needs some room beyond the files for its own structures.
const MIN_IMAGE: u64 = 1024 * 1024;

/// Writes the seed filesystem to `path` (replacing what is there).
pub fn build(path: &Path, seed: &Seed<'_>) -> std::io::Result<()> {
    let meta_data = seed.meta_data();
    let mut files: Vec<(&str, &[u8])> = vec![
        ("meta-data", meta_data.as_bytes()),
        ("user-data", seed.user_data.as_bytes()),
    ];
    if let Some(network) = seed.network_data {
        files.push(("network-config", network.as_bytes()));
    }
    let content: u64 = files.iter().map(|(_, bytes)| bytes.len() as u64).sum();
    // Room for the content twice over (clusters round up), then sectors.
    let size = (MIN_IMAGE + 2 * content).div_ceil(512) * 512;
    let mut image = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    image.set_len(size)?;
    let options = fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     ");
    fatfs::format_volume(&mut image, options)?;
    let filesystem = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new())?;
    let root = filesystem.root_dir();
    for (name, bytes) in files {
        root.create_file(name)?.write_all(bytes)?;
    }
    drop(root);
    filesystem.unmount()?;
    image.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_seed_holds_the_label_and_the_files() {
        let path = std::env::temp_dir().join(format!("vmpod-cidata-{}.img", std::process::id()));
        let user_data = "#cloud-config\nruncmd: [echo hi]\n".repeat(1000);
        build(
            &path,
            &Seed {
                instance_id: "7b0cbe33-0000-5000-8000-000000000000",
                hostname: "web",
                user_data: &user_data,
                network_data: Some("version: 2\n"),
            },
        )
        .expect("built");
        let mut image = std::fs::File::open(&path).expect("open");
        let filesystem = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new()).expect("FAT");
        assert_eq!(filesystem.volume_label(), "cidata");
        let read = |name: &str| {
            let mut text = String::new();
            filesystem
                .root_dir()
                .open_file(name)
                .expect(name)
                .read_to_string(&mut text)
                .expect("read");
            text
        };
        assert_eq!(
            read("meta-data"),
            "instance-id: 7b0cbe33-0000-5000-8000-000000000000\nlocal-hostname: web\n"
        );
        assert_eq!(read("user-data"), user_data);
        assert_eq!(read("network-config"), "version: 2\n");
        drop(filesystem);
        std::fs::remove_file(&path).ok();
    }
}
