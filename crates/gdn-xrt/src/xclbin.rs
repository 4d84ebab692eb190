//! A metadata-only xclbin: the axlf container (`xrt/xclbin.h`) with the four sections XRT needs to
//! open a kernel and route its buffers — EMBEDDED_METADATA (the kernel XML), MEM_TOPOLOGY,
//! CONNECTIVITY, IP_LAYOUT — and no bitstream. XRT's no-op driver (`XCL_EMULATION_MODE=noop`)
//! loads it and runs the host path against it; a real card needs the v++ build.
//!
//! Layout (little endian), from `xrt/xclbin.h` of XRT 2.13:
//! `struct axlf` is 496 bytes: magic (8) "xclbin2\0", signature length (4, −1), reserved (28,
//! 0xFF), key block (256, 0xFF), unique id (8), `axlf_header` (152), then the section headers
//! (40 bytes each, the first inside `axlf`). `axlf_header`: length, time stamp, feature-ROM time
//! stamp (8 each), version patch (2), major, minor (1 each), mode (2), action mask (2), ROM UUID
//! (16), platform VBNV (64), xclbin UUID (16), debug bin (16), section count (4, padded to 8).

use crate::kernel::abi::{self, ARG_NAMES};

/// `EMBEDDED_METADATA`.
const EMBEDDED_METADATA: u32 = 2;
/// `MEM_TOPOLOGY`.
const MEM_TOPOLOGY: u32 = 6;
/// `CONNECTIVITY`.
const CONNECTIVITY: u32 = 7;
/// `IP_LAYOUT`.
const IP_LAYOUT: u32 = 8;
/// `MEM_HBM` in `enum MEM_TYPE`.
const MEM_HBM: u8 = 6;
/// `IP_KERNEL` in `enum IP_TYPE`.
const IP_KERNEL: u32 = 1;
/// `AP_CTRL_CHAIN` in `enum IP_CONTROL`, at bits 8..16 of `ip_data.properties`.
const AP_CTRL_CHAIN: u32 = 1;

const AXLF_SIZE: usize = 496;
const HEADER_OFFSET: usize = 304;
const SECTION_HEADER_SIZE: usize = 40;

/// The platform the hardware build targets.
pub const PLATFORM: &str = "xilinx_u55c_gen3x16_xdma_3_202210_1";

/// How a kernel argument is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A pointer to global memory (m_axi): `xrtRunSetArg` takes a buffer handle.
    Buffer,
    /// An `unsigned int` scalar (s_axilite).
    Uint,
    /// A `float` scalar (s_axilite): passed through `...` as a double.
    Float,
}

/// One kernel argument in the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgMeta {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ArgKind,
}

/// A metadata-only xclbin for one kernel with one compute unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataXclbin {
    /// Kernel name.
    pub kernel: String,
    /// Arguments in index order.
    pub args: Vec<ArgMeta>,
    /// The xclbin UUID.
    pub uuid: [u8; 16],
}

impl MetadataXclbin {
    /// The `gdn_kernel` interface: `in`, `out`, `status` buffers, nine `uint` scalars and the
    /// `float` `q_scale`.
    pub fn gdn_kernel() -> Self {
        let args = ARG_NAMES
            .iter()
            .enumerate()
            .map(|(index, name)| ArgMeta {
                name: (*name).to_string(),
                kind: match index as i32 {
                    abi::arg::IN | abi::arg::OUT | abi::arg::STATUS => ArgKind::Buffer,
                    abi::arg::Q_SCALE => ArgKind::Float,
                    _ => ArgKind::Uint,
                },
            })
            .collect();
        MetadataXclbin {
            kernel: abi::KERNEL_NAME.to_string(),
            args,
            uuid: *b"hybrid-gdn-xrt\x00\x01",
        }
    }

    /// The control-register offset of argument `index`: HLS places arguments from 0x10, 8 bytes
    /// apart, pointers taking 12 (a 64-bit address and a reserved word). A v++ build's own
    /// kernel.xml is the authority on a real card; this layout only has to be self-consistent.
    fn offsets(&self) -> Vec<u32> {
        let mut offset = 0x10;
        self.args
            .iter()
            .map(|a| {
                let here = offset;
                offset += if a.kind == ArgKind::Buffer { 0xc } else { 0x8 };
                here
            })
            .collect()
    }

    /// The kernel XML of the EMBEDDED_METADATA section.
    pub fn kernel_xml(&self) -> String {
        let buffers: Vec<usize> = (0..self.args.len())
            .filter(|&i| self.args[i].kind == ArgKind::Buffer)
            .collect();
        let mut ports = String::new();
        for (n, _) in buffers.iter().enumerate() {
            ports.push_str(&format!(
                "          <port name=\"M_AXI_GMEM{n}\" mode=\"master\" range=\"0xFFFFFFFFFFFFFFFF\" \
                 dataWidth=\"512\" portType=\"addressable\" base=\"0x0\"/>\n"
            ));
        }
        ports.push_str(
            "          <port name=\"S_AXI_CONTROL\" mode=\"slave\" range=\"0x1000\" dataWidth=\"32\" \
             portType=\"addressable\" base=\"0x0\"/>\n",
        );
        let mut args = String::new();
        for ((index, arg), offset) in self.args.iter().enumerate().zip(self.offsets()) {
            let (qualifier, port, size, host_type) = match arg.kind {
                ArgKind::Buffer => {
                    let n = buffers.iter().position(|&b| b == index).unwrap_or(0);
                    (1, format!("M_AXI_GMEM{n}"), 8, "void*")
                }
                ArgKind::Uint => (0, "S_AXI_CONTROL".to_string(), 4, "uint"),
                ArgKind::Float => (0, "S_AXI_CONTROL".to_string(), 4, "float"),
            };
            args.push_str(&format!(
                "          <arg name=\"{}\" addressQualifier=\"{qualifier}\" id=\"{index}\" \
                 port=\"{port}\" size=\"{size:#x}\" offset=\"{offset:#x}\" hostOffset=\"0x0\" \
                 hostSize=\"{size:#x}\" type=\"{host_type}\"/>\n",
                arg.name
            ));
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <project name=\"hybrid-gdn-xrt\">\n\
             \x20 <platform vendor=\"xilinx\" boardid=\"u55c\" name=\"gen3x16_xdma_3\" featureRomTime=\"0\">\n\
             \x20   <version major=\"202210\" minor=\"1\"/>\n\
             \x20   <description/>\n\
             \x20   <board name=\"xilinx.com:au55c:1.0\" vendor=\"xilinx.com\" fpga=\"xcu55c-fsvh2892-2L-e\"/>\n\
             \x20   <build_flow/>\n\
             \x20   <host architecture=\"x86_64\"/>\n\
             \x20   <device name=\"fpga0\" fpgaDevice=\"virtexuplusHBM:xcu55c:fsvh2892:-2L:e\" addrWidth=\"0\">\n\
             \x20     <systemClocks/>\n\
             \x20     <core name=\"OCL_REGION_0\" target=\"bitstream\" type=\"clc_region\" clockFreq=\"300MHz\" numComputeUnits=\"1\">\n\
             \x20       <kernelClocks>\n\
             \x20         <clock port=\"KERNEL_CLK\" frequency=\"300MHz\"/>\n\
             \x20       </kernelClocks>\n\
             \x20       <kernel name=\"{kernel}\" language=\"c\" vlnv=\"xilinx.com:hls:{kernel}:1.0\" \
             preferredWorkGroupSizeMultiple=\"0\" workGroupSize=\"1\" interrupt=\"true\" \
             hwControlProtocol=\"ap_ctrl_chain\">\n\
             {ports}{args}\
             \x20         <instance name=\"{kernel}_1\">\n\
             \x20           <addrRemap base=\"0x1800000\" range=\"0x10000\" port=\"S_AXI_CONTROL\"/>\n\
             \x20         </instance>\n\
             \x20       </kernel>\n\
             \x20     </core>\n\
             \x20   </device>\n\
             \x20 </platform>\n\
             </project>\n",
            kernel = self.kernel,
        )
    }

    /// The whole axlf file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut xml = self.kernel_xml().into_bytes();
        xml.push(0);
        let sections: Vec<(u32, &str, Vec<u8>)> = vec![
            (EMBEDDED_METADATA, "metadata", xml),
            (MEM_TOPOLOGY, "mem_topology", self.mem_topology()),
            (CONNECTIVITY, "connectivity", self.connectivity()),
            (IP_LAYOUT, "ip_layout", self.ip_layout()),
        ];
        // axlf (with the first section header) + the other section headers, then the payloads,
        // each 8-byte aligned.
        let headers_end = AXLF_SIZE + (sections.len() - 1) * SECTION_HEADER_SIZE;
        let mut file = vec![0u8; headers_end];
        file[0..8].copy_from_slice(b"xclbin2\0");
        put_i32(&mut file, 8, -1);
        file[12..40].fill(0xff);
        file[40..296].fill(0xff);
        let mut placed = Vec::new();
        for (kind, name, payload) in &sections {
            align_to(&mut file, 8);
            placed.push((*kind, *name, file.len(), payload.len()));
            file.extend_from_slice(payload);
        }
        align_to(&mut file, 8);
        let h = HEADER_OFFSET;
        let length = file.len() as u64;
        put_u64(&mut file, h, length); // m_length
        put_u64(&mut file, h + 8, 0); // m_timeStamp: fixed, so the file is reproducible
        put_u16(&mut file, h + 24, 0); // m_versionPatch
        file[h + 26] = 2; // m_versionMajor
        file[h + 27] = 13; // m_versionMinor
        put_u16(&mut file, h + 28, 0); // m_mode: XCLBIN_FLAT
        let vbnv = PLATFORM.as_bytes();
        file[h + 48..h + 48 + vbnv.len()].copy_from_slice(vbnv);
        file[h + 112..h + 128].copy_from_slice(&self.uuid);
        put_u32(&mut file, h + 144, sections.len() as u32); // m_numSections
        for (n, (kind, name, offset, size)) in placed.into_iter().enumerate() {
            let at = AXLF_SIZE - SECTION_HEADER_SIZE + n * SECTION_HEADER_SIZE;
            put_u32(&mut file, at, kind);
            file[at + 4..at + 4 + name.len()].copy_from_slice(name.as_bytes());
            put_u64(&mut file, at + 24, offset as u64);
            put_u64(&mut file, at + 32, size as u64);
        }
        file
    }

    /// One HBM pseudo channel of 512 MiB (`mem_topology` with one `mem_data`).
    fn mem_topology(&self) -> Vec<u8> {
        let mut s = vec![0u8; 8 + 40];
        put_i32(&mut s, 0, 1); // m_count
        let m = 8;
        s[m] = MEM_HBM; // m_type
        s[m + 1] = 1; // m_used
        put_u64(&mut s, m + 8, 512 * 1024); // m_size in KiB
        put_u64(&mut s, m + 16, 0); // m_base_address
        s[m + 24..m + 30].copy_from_slice(b"HBM[0]");
        s
    }

    /// Every buffer argument of compute unit 0 connected to memory 0.
    fn connectivity(&self) -> Vec<u8> {
        let buffers: Vec<usize> = (0..self.args.len())
            .filter(|&i| self.args[i].kind == ArgKind::Buffer)
            .collect();
        let mut s = vec![0u8; 4 + 12 * buffers.len().max(1)];
        put_i32(&mut s, 0, buffers.len() as i32);
        for (n, index) in buffers.into_iter().enumerate() {
            let c = 4 + 12 * n;
            put_i32(&mut s, c, index as i32); // arg_index
            put_i32(&mut s, c + 4, 0); // m_ip_layout_index
            put_i32(&mut s, c + 8, 0); // mem_data_index
        }
        s
    }

    /// One kernel compute unit, ap_ctrl_chain, interrupt enabled, at 0x1800000.
    fn ip_layout(&self) -> Vec<u8> {
        let mut s = vec![0u8; 8 + 80];
        put_i32(&mut s, 0, 1); // m_count
        let ip = 8;
        put_u32(&mut s, ip, IP_KERNEL);
        put_u32(&mut s, ip + 4, 1 | (AP_CTRL_CHAIN << 8)); // int enable | control protocol
        put_u64(&mut s, ip + 8, 0x180_0000);
        let name = format!("{}:{}_1", self.kernel, self.kernel);
        let n = name.len().min(63);
        s[ip + 16..ip + 16 + n].copy_from_slice(&name.as_bytes()[..n]);
        s
    }
}

fn align_to(file: &mut Vec<u8>, alignment: usize) {
    let padded = file.len().div_ceil(alignment) * alignment;
    file.resize(padded, 0);
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_i32(buf: &mut [u8], at: usize, v: i32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The emconfig.json that makes XRT's emulation drivers see `devices` U55C cards.
pub fn emconfig_json(devices: usize) -> String {
    let entries: Vec<String> = (0..devices.max(1))
        .map(|_| format!("{{\"Name\": \"{PLATFORM}\", \"FeatureRomTimestamp\": \"0\"}}"))
        .collect();
    format!(
        "{{\"Platform\": {{\"Boards\": [{{\"Devices\": [{}]}}]}}}}\n",
        entries.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }

    #[test]
    fn container_layout_follows_xclbin_h() {
        let x = MetadataXclbin::gdn_kernel();
        let bytes = x.to_bytes();
        assert_eq!(&bytes[..8], b"xclbin2\0");
        assert_eq!(u64_at(&bytes, HEADER_OFFSET) as usize, bytes.len());
        assert_eq!(u32_at(&bytes, HEADER_OFFSET + 144), 4);
        assert_eq!(&bytes[HEADER_OFFSET + 112..HEADER_OFFSET + 128], &x.uuid);
        let kinds: Vec<u32> = (0..4)
            .map(|n| {
                u32_at(
                    &bytes,
                    AXLF_SIZE - SECTION_HEADER_SIZE + n * SECTION_HEADER_SIZE,
                )
            })
            .collect();
        assert_eq!(kinds, vec![2, 6, 7, 8]);
        // Every section lies inside the file, 8-byte aligned.
        for n in 0..4 {
            let at = AXLF_SIZE - SECTION_HEADER_SIZE + n * SECTION_HEADER_SIZE;
            let (offset, size) = (u64_at(&bytes, at + 24), u64_at(&bytes, at + 32));
            assert_eq!(offset % 8, 0);
            assert!(offset + size <= bytes.len() as u64);
        }
        // The XML names every argument with its id.
        let xml = x.kernel_xml();
        for (id, name) in ARG_NAMES.iter().enumerate() {
            assert!(
                xml.contains(&format!("name=\"{name}\" addressQualifier")),
                "{name}"
            );
            assert!(xml.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(xml.contains("type=\"float\""));
    }

    #[test]
    fn emconfig_lists_the_devices() {
        let json = emconfig_json(2);
        assert_eq!(json.matches(PLATFORM).count(), 2);
    }
}
