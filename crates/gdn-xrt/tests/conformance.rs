//! The shared conformance suite against the C-simulation of every design point the facade's run
//! does not use (it runs `xrt-sim`, P = 16): the head grouping, padding of partial groups and the
//! bank layout differ per P, the arithmetic must not.

use hybrid_gdn::GdnBackend;
use hybrid_gdn_xrt::{DesignPoint, SimConfig, XrtKernel};

fn simulated(design: DesignPoint) -> Box<dyn GdnBackend> {
    let config = SimConfig {
        design,
        ..SimConfig::default()
    };
    Box::new(XrtKernel::simulated_with(config).expect("xrt-sim"))
}

mod p2 {
    hybrid_gdn::conformance_tests!(
        || super::simulated(hybrid_gdn_xrt::DesignPoint::P2),
        "../../models/goldens/gdn"
    );
}

mod p4 {
    hybrid_gdn::conformance_tests!(
        || super::simulated(hybrid_gdn_xrt::DesignPoint::P4),
        "../../models/goldens/gdn"
    );
}

mod p8 {
    hybrid_gdn::conformance_tests!(
        || super::simulated(hybrid_gdn_xrt::DesignPoint::P8),
        "../../models/goldens/gdn"
    );
}

mod p16 {
    hybrid_gdn::conformance_tests!(
        || super::simulated(hybrid_gdn_xrt::DesignPoint::P16),
        "../../models/goldens/gdn"
    );
}
