//! OpenAI's own Python client (`openai` from PyPI) against examples/serve on the tiny fixture:
//! tests/serve/openai_client.py checks streaming and non-streaming answers, 16 concurrent
//! streams and the client's error classes.
//!
//! The Python to run is `HYBRID_SERVE_PYTHON` (default `python3`). Without the `openai`
//! package the test is skipped with a message — unless `HYBRID_REQUIRE_OPENAI=1`, which
//! `.ci/run` sets after installing it, and which turns the skip into a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;

#[test]
fn openai_python_client_streams_and_batches() {
    let python = std::env::var("HYBRID_SERVE_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_client = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        assert!(
            std::env::var("HYBRID_REQUIRE_OPENAI").as_deref() != Ok("1"),
            "HYBRID_REQUIRE_OPENAI=1 but `{python} -c 'import openai'` fails: install the \
             openai package (see .ci/run) or point HYBRID_SERVE_PYTHON at a Python that has it"
        );
        eprintln!("skipped: `{python}` has no openai package (pip install openai)");
        return;
    }
    let server = Server::start(&["--max-batch", "8", "--max-queue", "64"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/openai_client.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}/v1", server.address))
        .arg("qwen3-next-tiny")
        .output()
        .expect("run the Python client");
    assert!(
        output.status.success(),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.log.lock().unwrap()
    );
}
