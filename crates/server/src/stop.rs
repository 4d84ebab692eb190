//! Stop strings over streamed text.
//!
//! Text is streamed token by token, so a stop string can arrive split across tokens. The
//! matcher holds back the shortest tail of the text that could still grow into a stop string,
//! emits the rest, and on a match returns the text before the earliest stop (the stop string
//! itself is never sent, as OpenAI's API does).

/// What [`StopMatcher::push`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// No stop string yet: this text can be sent.
    Continue(String),
    /// A stop string matched: this is the text before it; generation ends.
    Stopped(String),
}

/// Finds stop strings in text that arrives piece by piece.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops` (non-empty strings; empty ones are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Adds `text` after what came before.
    pub fn push(&mut self, text: &str) -> Scan {
        self.held.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = earliest {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Scan::Stopped(before);
        }
        // Everything before the longest tail that starts some stop string is safe to send.
        let keep = self
            .stops
            .iter()
            .map(|stop| tail_starting(&self.held, stop))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        Scan::Continue(self.held.drain(..cut).collect())
    }

    /// The text still held back, when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with.
fn tail_starting(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            match matcher.push(piece) {
                Scan::Continue(text) => out.push_str(&text),
                Scan::Stopped(text) => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&matcher.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_found_and_not_sent() {
        assert_eq!(
            run(
                &["\n\nUser:"],
                &["Hello", " there\n", "\nUs", "er:", " more"]
            ),
            ("Hello there".to_string(), true)
        );
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".to_string(), true));
    }

    #[test]
    fn a_near_miss_is_released_when_it_stops_matching() {
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(matcher.push("the EN"), Scan::Continue("the ".into()));
        assert_eq!(matcher.push("D"), Scan::Stopped(String::new()));
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(matcher.push("the EN"), Scan::Continue("the ".into()));
        assert_eq!(matcher.push("d!"), Scan::Continue("ENd!".into()));
    }

    #[test]
    fn without_stops_everything_passes_and_multibyte_tails_are_whole() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
        // "é" is two bytes; a stop starting with it must never split the text mid-character.
        assert_eq!(
            run(&["éx"], &["café", " ok"]),
            ("café ok".to_string(), false)
        );
        assert_eq!(run(&["éx"], &["caf", "éx"]), ("caf".to_string(), true));
    }
}
