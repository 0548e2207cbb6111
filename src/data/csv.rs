//! Numeric CSV datasets, checked as they stream: a header of unique column names, then rows of
//! exactly as many finite numbers. The first problem is reported with its line number, so a
//! client can fix a file of millions of rows without guessing.
//!
//! The dialect is deliberately small: comma-separated, `\n` or `\r\n` line ends, optional
//! double quotes around a field (`""` inside quotes is a quote) and no line breaks inside
//! fields, so that a line number always means a line of the file.

use std::fmt;

/// Longest line accepted: beyond this a "line" is almost certainly not CSV.
const MAX_LINE_BYTES: usize = 1024 * 1024;
pub const MAX_COLUMNS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    /// 1-based line of the file; 0 when the problem is the file as a whole.
    pub line: u64,
    pub message: String,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 { f.write_str(&self.message) } else { write!(f, "line {}: {}", self.line, self.message) }
    }
}

impl std::error::Error for CsvError {}

/// What a complete, valid file held.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvTable {
    pub columns: Vec<String>,
    pub rows: u64,
    /// Row-major cells, when the scanner was asked to keep them.
    pub values: Vec<f32>,
}

pub struct CsvScanner {
    pending: Vec<u8>,
    line: u64,
    columns: Option<Vec<String>>,
    rows: u64,
    keep_values: bool,
    values: Vec<f32>,
    fields: Vec<String>,
}

impl CsvScanner {
    /// Checks only (uploads): memory stays at one line.
    pub fn validating() -> Self {
        Self::new(false)
    }

    /// Checks and keeps every cell (training and batch inference read datasets this way).
    pub fn collecting() -> Self {
        Self::new(true)
    }

    fn new(keep_values: bool) -> Self {
        Self { pending: Vec::new(), line: 0, columns: None, rows: 0, keep_values, values: Vec::new(), fields: Vec::new() }
    }

    pub fn update(&mut self, mut input: &[u8]) -> Result<(), CsvError> {
        while let Some(end) = memchr(b'\n', input) {
            if self.pending.is_empty() {
                self.line_done(&input[..end])?;
            } else {
                self.pending.extend_from_slice(&input[..end]);
                let line = std::mem::take(&mut self.pending);
                self.line_done(&line)?;
                self.pending = line;
                self.pending.clear();
            }
            input = &input[end + 1..];
        }
        if self.pending.len() + input.len() > MAX_LINE_BYTES {
            return Err(CsvError { line: self.line + 1, message: format!("longer than {MAX_LINE_BYTES} bytes") });
        }
        self.pending.extend_from_slice(input);
        Ok(())
    }

    pub fn finish(mut self) -> Result<CsvTable, CsvError> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.line_done(&line)?;
        }
        let columns = self.columns.ok_or_else(|| CsvError { line: 0, message: "the file is empty: it needs a header line".into() })?;
        if self.rows == 0 {
            return Err(CsvError { line: 0, message: "the file has a header but no rows".into() });
        }
        Ok(CsvTable { columns, rows: self.rows, values: self.values })
    }

    fn line_done(&mut self, raw: &[u8]) -> Result<(), CsvError> {
        self.line += 1;
        let line = self.line;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|_| CsvError { line, message: "not valid UTF-8".into() })?;
        if text.trim().is_empty() {
            // A blank last line is only the file's final newline doubled; elsewhere it is a
            // row with no values, which the caller would not want silently skipped.
            return Err(CsvError { line, message: "blank line".into() });
        }
        split_fields(text, &mut self.fields).map_err(|message| CsvError { line, message })?;
        match &self.columns {
            None => {
                if self.fields.len() > MAX_COLUMNS {
                    return Err(CsvError { line, message: format!("header: more than {MAX_COLUMNS} columns") });
                }
                let mut names: Vec<String> = Vec::with_capacity(self.fields.len());
                let mut seen = std::collections::HashSet::with_capacity(self.fields.len());
                for (i, name) in self.fields.iter().enumerate() {
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(CsvError { line, message: format!("header: column {} has no name", i + 1) });
                    }
                    if !seen.insert(name) {
                        return Err(CsvError { line, message: format!("header: column `{name}` appears twice") });
                    }
                    names.push(name.to_owned());
                }
                self.columns = Some(names);
            }
            Some(columns) => {
                if self.fields.len() != columns.len() {
                    return Err(CsvError {
                        line,
                        message: format!("expected {} fields as in the header, found {}", columns.len(), self.fields.len()),
                    });
                }
                for (cell, name) in self.fields.iter().zip(columns) {
                    let value: f32 = cell.trim().parse().map_err(|_| CsvError {
                        line,
                        message: format!("column `{name}`: `{}` is not a number", truncate(cell, 40)),
                    })?;
                    if !value.is_finite() {
                        return Err(CsvError { line, message: format!("column `{name}`: `{}` is not a finite number", truncate(cell, 40)) });
                    }
                    if self.keep_values {
                        self.values.push(value);
                    }
                }
                self.rows += 1;
            }
        }
        Ok(())
    }
}

fn truncate(text: &str, chars: usize) -> String {
    let mut out: String = text.chars().take(chars).collect();
    if text.chars().count() > chars {
        out.push('…');
    }
    out
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

/// Splits one line into fields, reusing `out`'s strings.
fn split_fields(line: &str, out: &mut Vec<String>) -> Result<(), String> {
    out.clear();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        // Leading spaces before a quote are allowed (`a, "b"`).
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(format!("field {} has an unclosed quote", out.len() + 1)),
                }
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            match chars.next() {
                None => {
                    out.push(field);
                    return Ok(());
                }
                Some(',') => out.push(field),
                Some(c) => return Err(format!("field {}: `{c}` after a closing quote", out.len() + 1)),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        out.push(field);
                        return Ok(());
                    }
                    Some(',') => break,
                    Some('"') => return Err(format!("field {}: a quote inside an unquoted field", out.len() + 1)),
                    Some(c) => field.push(c),
                }
            }
            out.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str, piece: usize) -> Result<CsvTable, CsvError> {
        let mut scanner = CsvScanner::collecting();
        for chunk in text.as_bytes().chunks(piece) {
            scanner.update(chunk)?;
        }
        scanner.finish()
    }

    #[test]
    fn reads_a_valid_file_whatever_the_piece_size() {
        let text = "x1,\"x 2\",label\r\n1,2.5,0\n-3e2, 4 ,1\n";
        for piece in [1, 2, 3, 7, 1000] {
            let table = scan(text, piece).unwrap();
            assert_eq!(table.columns, ["x1", "x 2", "label"]);
            assert_eq!(table.rows, 2);
            assert_eq!(table.values, [1.0, 2.5, 0.0, -300.0, 4.0, 1.0]);
        }
        assert_eq!(scan("a,b\n1,2", 3).unwrap().rows, 1, "no final newline");
    }

    #[test]
    fn names_the_line_of_the_first_problem() {
        let err = scan("a,b\n1,2\n3\n", 4).unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (3, "expected 2 fields as in the header, found 1"));
        let err = scan("a,b\n1,2\n3,4\n5,x\n", 5).unwrap_err();
        assert_eq!(err.to_string(), "line 4: column `b`: `x` is not a number");
        let err = scan("a,b\n1,NaN\n", 64).unwrap_err();
        assert_eq!(err.line, 2);
        let err = scan("a,a\n1,2\n", 64).unwrap_err();
        assert_eq!(err.to_string(), "line 1: header: column `a` appears twice");
        let err = scan("a,b\n1,2\n\n3,4\n", 64).unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(scan("a,\"b\n", 64).unwrap_err().line, 1);
        assert_eq!(scan("", 64).unwrap_err().line, 0);
        assert_eq!(scan("a,b\n", 64).unwrap_err().message, "the file has a header but no rows");
        assert_eq!(scan("a\n\u{fffd}\n", 64).unwrap_err().line, 2);
    }

    #[test]
    fn a_header_with_too_many_columns_is_refused_before_its_names_are_compared() {
        let header: Vec<String> = (0..MAX_COLUMNS + 1).map(|i| format!("c{i}")).collect();
        let err = scan(&format!("{}\n", header.join(",")), 4096).unwrap_err();
        assert_eq!((err.line, err.message.contains("more than")), (1, true));
    }

    #[test]
    fn refuses_runaway_lines_without_buffering_them() {
        let mut scanner = CsvScanner::validating();
        let big = vec![b'1'; MAX_LINE_BYTES / 4];
        let mut result = Ok(());
        for _ in 0..8 {
            result = scanner.update(&big);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.unwrap_err().line, 1);
    }
}
