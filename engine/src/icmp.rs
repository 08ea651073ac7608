//! ICMP echo messages (RFC 792) for the DHCP server's conflict check: the request zpxe sends
//! and the check that a reply answers it. The socket is the platform's
//! (`zpxe_platform::icmp::Pinger`).

//= https://www.rfc-editor.org/rfc/rfc792
//# Echo or Echo Reply Message
//#     Type: 8 for echo message; 0 for echo reply message.
pub const ECHO_REQUEST: u8 = 8;
pub const ECHO_REPLY: u8 = 0;
/// What an echo carries after its header, so a reply can be told from others' pings.
pub const PAYLOAD: &[u8; 8] = b"zpxe-dhc";

/// An echo request: type, code, checksum, identifier, sequence number, payload.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + PAYLOAD.len());
    p.extend_from_slice(&[ECHO_REQUEST, 0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

//= https://www.rfc-editor.org/rfc/rfc1071#section-1
//# (2)  To check a checksum, the 1's complement sum is computed over the
//#      same set of octets, including the checksum field.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The sequence number of an echo reply to us, from a datagram socket's message (ICMP header
/// first) or, with `raw_id`, a raw socket's (IP header first; the identifier must be ours).
pub fn parse_reply(bytes: &[u8], raw_id: Option<u16>) -> Option<u16> {
    let icmp = match raw_id {
        Some(_) => {
            let ihl = usize::from(bytes.first()? & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            bytes.get(ihl..)?
        }
        None => bytes,
    };
    let header = icmp.get(..8)?;
    if header[0] != ECHO_REPLY || header[1] != 0 || icmp.get(8..) != Some(&PAYLOAD[..]) {
        return None;
    }
    if let Some(id) = raw_id
        && u16::from_be_bytes([header[4], header[5]]) != id
    {
        return None;
    }
    Some(u16::from_be_bytes([header[6], header[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_has_a_valid_checksum() {
        let p = echo_request(0x1234, 7);
        assert_eq!(p[0], ECHO_REQUEST);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
        // Summed with its checksum, the message adds up to all ones.
        assert_eq!(checksum(&p), 0);
        // RFC 1071's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            !checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn only_our_echo_replies_are_taken() {
        let mut reply = echo_request(0x1234, 9);
        reply[0] = ECHO_REPLY;
        assert_eq!(parse_reply(&reply, None), Some(9));
        let mut ip = vec![0x45u8; 20];
        ip.extend_from_slice(&reply);
        assert_eq!(parse_reply(&ip, Some(0x1234)), Some(9));
        // Another program's ping, our own request seen on a raw socket, a truncated one.
        assert_eq!(parse_reply(&ip, Some(0x4321)), None);
        let request = echo_request(0x1234, 9);
        assert_eq!(parse_reply(&request, None), None);
        assert_eq!(parse_reply(&reply[..10], None), None);
        let mut other = reply.clone();
        other[8] ^= 1;
        assert_eq!(parse_reply(&other, None), None);
        assert_eq!(parse_reply(&[0x41, 0, 0], Some(1)), None);
    }
}
