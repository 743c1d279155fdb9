//! The seed disks cloud-init looks for, as small FAT filesystems built
//! with the `fatfs` crate in the scratch directory and attached read-only
//! as KubeVirt does: NoCloud (label `cidata`: `meta-data` with the VM's
//! stable instance-id and its hostname, `user-data`, and `network-config`
//! if the definition has one) and the OpenStack config drive (label
//! `config-2`: `openstack/latest/meta_data.json`, `user_data`, and
//! `network_data.json` if the definition has one).
//!
//! VMM thread, before the first boot.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

/// Which datasource the seed is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NoCloud,
    ConfigDrive,
}

/// What goes on the seed disk.
pub struct Seed<'a> {
    pub kind: Kind,
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

    fn openstack_meta_data(&self) -> String {
        serde_json::json!({
            "uuid": self.instance_id,
            "hostname": self.hostname,
            "name": self.hostname,
            "launch_index": 0,
        })
        .to_string()
    }

    /// The label and (path, bytes) of every file.
    fn files(&self) -> (&'static [u8; 11], Vec<(&'static str, Vec<u8>)>) {
        let network = self.network_data.map(|text| text.as_bytes().to_vec());
        match self.kind {
            Kind::NoCloud => {
                let mut files = vec![
                    ("meta-data", self.meta_data().into_bytes()),
                    ("user-data", self.user_data.as_bytes().to_vec()),
                ];
                files.extend(network.map(|bytes| ("network-config", bytes)));
                (b"cidata     ", files)
            }
            Kind::ConfigDrive => {
                let mut files = vec![
                    (
                        "openstack/latest/meta_data.json",
                        self.openstack_meta_data().into_bytes(),
                    ),
                    (
                        "openstack/latest/user_data",
                        self.user_data.as_bytes().to_vec(),
                    ),
                ];
                files.extend(network.map(|bytes| ("openstack/latest/network_data.json", bytes)));
                (b"config-2   ", files)
            }
        }
    }
}

/// FAT12 needs some room beyond the files for its own structures.
const MIN_IMAGE: u64 = 1024 * 1024;

/// Writes the seed filesystem to `path` (replacing what is there).
pub fn build(path: &Path, seed: &Seed<'_>) -> std::io::Result<()> {
    let (label, files) = seed.files();
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
    let options = fatfs::FormatVolumeOptions::new().volume_label(*label);
    fatfs::format_volume(&mut image, options)?;
    let filesystem = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new())?;
    let root = filesystem.root_dir();
    for (path, bytes) in files {
        let (directory, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut parent = root.clone();
        for part in directory.split('/').filter(|part| !part.is_empty()) {
            parent = parent.create_dir(part)?;
        }
        parent.create_file(name)?.write_all(&bytes)?;
    }
    drop(root);
    filesystem.unmount()?;
    image.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The seed's volume label, and a reader of its files by path.
    fn read_back(path: &Path) -> (String, impl Fn(&str) -> String) {
        let image = std::fs::read(path).expect("read the image");
        let label =
            fatfs::FileSystem::new(std::io::Cursor::new(image.clone()), fatfs::FsOptions::new())
                .expect("FAT")
                .volume_label();
        let read = move |name: &str| {
            let filesystem = fatfs::FileSystem::new(
                std::io::Cursor::new(image.clone()),
                fatfs::FsOptions::new(),
            )
            .expect("FAT");
            let mut text = String::new();
            filesystem
                .root_dir()
                .open_file(name)
                .expect(name)
                .read_to_string(&mut text)
                .expect("read");
            text
        };
        (label, read)
    }

    #[test]
    fn the_seed_holds_the_label_and_the_files() {
        let path = std::env::temp_dir().join(format!("vmpod-cidata-{}.img", std::process::id()));
        let user_data = "#cloud-config\nruncmd: [echo hi]\n".repeat(1000);
        build(
            &path,
            &Seed {
                kind: Kind::NoCloud,
                instance_id: "7b0cbe33-0000-5000-8000-000000000000",
                hostname: "web",
                user_data: &user_data,
                network_data: Some("version: 2\n"),
            },
        )
        .expect("built");
        let (volume_label, read) = read_back(&path);
        assert_eq!(volume_label, "cidata");
        assert_eq!(
            read("meta-data"),
            "instance-id: 7b0cbe33-0000-5000-8000-000000000000\nlocal-hostname: web\n"
        );
        assert_eq!(read("user-data"), user_data);
        assert_eq!(read("network-config"), "version: 2\n");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn the_config_drive_has_openstacks_layout() {
        let path = std::env::temp_dir().join(format!("vmpod-config2-{}.img", std::process::id()));
        build(
            &path,
            &Seed {
                kind: Kind::ConfigDrive,
                instance_id: "7b0cbe33-0000-5000-8000-000000000000",
                hostname: "web",
                user_data: "#cloud-config\n",
                network_data: Some(r#"{"links": []}"#),
            },
        )
        .expect("built");
        let (volume_label, read) = read_back(&path);
        assert_eq!(volume_label, "config-2");
        let meta: serde_json::Value =
            serde_json::from_str(&read("openstack/latest/meta_data.json")).expect("JSON");
        assert_eq!(meta["uuid"], "7b0cbe33-0000-5000-8000-000000000000");
        assert_eq!(meta["hostname"], "web");
        assert_eq!(read("openstack/latest/user_data"), "#cloud-config\n");
        assert_eq!(
            read("openstack/latest/network_data.json"),
            r#"{"links": []}"#
        );
        std::fs::remove_file(&path).ok();
    }
}
