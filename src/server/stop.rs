//! Stop strings over streamed text: text that could be the start of a stop string is held
//! back until it is clear either way, and the output ends before the stop string.

pub struct StopText {
    stops: Vec<String>,
    text: String,
    released: usize,
}

/// What one push released.
#[derive(Debug, PartialEq)]
pub struct Released {
    pub text: String,
    /// A stop string was found: generation ends, and `text` stops right before it.
    pub stopped: bool,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), text: String::new(), released: 0 }
    }

    pub fn push(&mut self, piece: &str) -> Released {
        // A stop string can start at most (longest stop - 1) bytes before the new piece.
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let search_from = floor_char_boundary(&self.text, self.text.len().saturating_sub(longest.saturating_sub(1)))
            .max(self.released);
        self.text.push_str(piece);
        let hit = self.stops.iter().filter_map(|s| self.text[search_from..].find(s.as_str())).min();
        if let Some(at) = hit {
            let end = search_from + at;
            return Released { text: self.take(end), stopped: true };
        }
        let held = self.stops.iter().map(|s| partial_suffix(&self.text, s)).max().unwrap_or(0);
        let end = self.text.len() - held;
        Released { text: self.take(end), stopped: false }
    }

    /// Whatever is still held back (generation ended without a stop string).
    pub fn finish(&mut self) -> String {
        self.take(self.text.len())
    }

    fn take(&mut self, end: usize) -> String {
        let end = end.max(self.released);
        let out = self.text[self.released..end].to_string();
        self.released = end;
        out
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop` (and ends on a
/// character boundary of `text`).
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let r = s.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true, String::new());
            }
        }
        (out, false, s.finish())
    }

    #[test]
    fn no_stops_releases_everything_at_once() {
        assert_eq!(run(&[], &["a", "b"]), (vec!["a".into(), "b".into()], false, String::new()));
    }

    #[test]
    fn a_stop_split_over_pieces_is_held_back_and_cut() {
        let (out, stopped, _) = run(&["\n\n"], &["x = 1", "\n", "\ny = 2"]);
        assert_eq!(out, vec!["x = 1", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn a_false_start_is_released_later() {
        let (out, stopped, rest) = run(&["END"], &["E", "N", "d", "!"]);
        assert_eq!(out, vec!["", "", "ENd", "!"]);
        assert!(!stopped);
        assert_eq!(rest, "");
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        let (out, stopped, rest) = run(&["END"], &["abc", "EN"]);
        assert_eq!(out, vec!["abc", ""]);
        assert!(!stopped);
        assert_eq!(rest, "EN");
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_text_before_it_is_kept() {
        let (out, stopped, _) = run(&["def", "class"], &["x class y def"]);
        assert_eq!(out, vec!["x "]);
        assert!(stopped);
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let (out, stopped, _) = run(&["日本x"], &["é日", "本", "y"]);
        assert_eq!(out.concat(), "é日本y");
        assert!(!stopped);
        let (out, stopped, _) = run(&["本"], &["é日", "本"]);
        assert_eq!(out.concat(), "é日");
        assert!(stopped);
    }
}
