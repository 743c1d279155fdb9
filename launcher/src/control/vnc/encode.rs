//! What changed on the screen, and its pixels in a viewer's encoding:
//! damage found by comparing 64×64 tiles with the frame the viewer
//! already has, a vertical scroll found by matching rows (sent as one
//! CopyRect), and the Raw and ZRLE encodings (RFC 6143, 7.7). Pure; the
//! control thread.

use std::collections::HashMap;

use flate2::{Compress, Compression, FlushCompress};

use super::rfb::PixelFormat;

/// ZRLE's tile size, and the grid damage is found on.
pub const TILE: usize = 64;

/// A rectangle of the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl Rect {
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// A frame: XRGB pixels, row after row.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    pub pixels: &'a [u32],
    pub width: usize,
    pub height: usize,
}

impl Frame<'_> {
    fn row(&self, y: usize, x: usize, width: usize) -> &[u32] {
        let start = y * self.width + x;
        &self.pixels[start..start + width]
    }

    fn full_row(&self, y: usize) -> &[u32] {
        self.row(y, 0, self.width)
    }
}

/// The parts of `area` where `new` differs from `old`: dirty tiles,
/// joined into runs along each row of tiles, and runs with the same
/// columns joined down.
pub fn damage(old: Frame, new: Frame, area: Rect) -> Vec<Rect> {
    let mut rects: Vec<Rect> = Vec::new();
    let mut tile_y = area.y;
    while tile_y < area.y + area.height {
        let tile_height = TILE.min(area.y + area.height - tile_y);
        let mut run: Option<Rect> = None;
        let mut tile_x = area.x;
        while tile_x < area.x + area.width {
            let tile_width = TILE.min(area.x + area.width - tile_x);
            let dirty = (tile_y..tile_y + tile_height)
                .any(|y| old.row(y, tile_x, tile_width) != new.row(y, tile_x, tile_width));
            match (&mut run, dirty) {
                (Some(run), true) => run.width += tile_width,
                (None, true) => {
                    run = Some(Rect {
                        x: tile_x,
                        y: tile_y,
                        width: tile_width,
                        height: tile_height,
                    })
                }
                (Some(_), false) => add_joined(&mut rects, run.take().expect("a run")),
                (None, false) => {}
            }
            tile_x += tile_width;
        }
        if let Some(run) = run {
            add_joined(&mut rects, run);
        }
        tile_y += tile_height;
    }
    rects
}

/// Adds `rect`, joining it to the one just above with the same columns.
fn add_joined(rects: &mut Vec<Rect>, rect: Rect) {
    if let Some(above) = rects.iter_mut().rev().find(|above| {
        above.x == rect.x && above.width == rect.width && above.y + above.height == rect.y
    }) {
        above.height += rect.height;
    } else {
        rects.push(rect);
    }
}

/// A band of rows that moved up or down: rows `y..y + height` of the new
/// frame are rows `source_y..` of the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scroll {
    pub y: usize,
    pub source_y: usize,
    pub height: usize,
}

/// The fewest rows worth a CopyRect.
const MIN_SCROLL_ROWS: usize = 16;

fn row_hash(row: &[u32]) -> u64 {
    row.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &pixel| {
        (hash ^ u64::from(pixel)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The largest band that scrolled between `old` and `new` (a terminal
/// scrolling, a page moving), if at least a quarter of the rows changed.
pub fn find_scroll(old: Frame, new: Frame) -> Option<Scroll> {
    let height = new.height;
    let changed: Vec<usize> = (0..height)
        .filter(|&y| old.full_row(y) != new.full_row(y))
        .collect();
    if changed.len() < height / 4 || changed.len() < MIN_SCROLL_ROWS {
        return None;
    }
    // Rows of one colour (blank lines) match anywhere; they cast no vote.
    let uniform = |row: &[u32]| row.iter().all(|&pixel| pixel == row[0]);
    let mut old_rows: HashMap<u64, usize> = HashMap::new();
    for y in 0..height {
        let row = old.full_row(y);
        if !uniform(row) {
            old_rows.entry(row_hash(row)).or_insert(y);
        }
    }
    let mut votes: HashMap<isize, usize> = HashMap::new();
    for &y in &changed {
        let row = new.full_row(y);
        if uniform(row) {
            continue;
        }
        if let Some(&source) = old_rows.get(&row_hash(row)) {
            *votes.entry(source as isize - y as isize).or_default() += 1;
        }
    }
    let (&shift, &count) = votes
        .iter()
        .max_by_key(|(shift, count)| (**count, -shift.abs()))?;
    if shift == 0 || count < MIN_SCROLL_ROWS / 2 {
        return None;
    }
    // The longest run of rows that really are the old rows shifted.
    let mut best: Option<Scroll> = None;
    let mut start = None;
    for y in 0..=height {
        let source = y as isize + shift;
        let matches = y < height
            && (0..height as isize).contains(&source)
            && new.full_row(y) == old.full_row(source as usize);
        match (matches, start) {
            (true, None) => start = Some(y),
            (false, Some(first)) => {
                let band = Scroll {
                    y: first,
                    source_y: (first as isize + shift) as usize,
                    height: y - first,
                };
                if best.is_none_or(|best| band.height > best.height) {
                    best = Some(band);
                }
                start = None;
            }
            _ => {}
        }
    }
    best.filter(|band| band.height >= MIN_SCROLL_ROWS)
}

/// Does to `frame` what a viewer does with the CopyRect of `scroll`.
pub fn apply_scroll(frame: &mut [u32], width: usize, scroll: Scroll) {
    let from = scroll.source_y * width;
    let to = scroll.y * width;
    frame.copy_within(from..from + scroll.height * width, to);
}

/// Raw: every pixel of `rect` in the viewer's format.
pub fn raw(frame: Frame, rect: Rect, format: &PixelFormat, out: &mut Vec<u8>) {
    out.reserve(rect.width * rect.height * format.bytes_per_pixel());
    for y in rect.y..rect.y + rect.height {
        for &pixel in frame.row(y, rect.x, rect.width) {
            format.put(format.convert(pixel), out);
        }
    }
}

/// A viewer's ZRLE encoder: one zlib stream for the whole connection.
pub struct Zrle {
    stream: Compress,
    tiles: Vec<u8>,
    /// The tile being encoded, in the viewer's pixel values.
    values: Vec<u32>,
    palette: Vec<u32>,
    indices: HashMap<u32, u8>,
}

impl Default for Zrle {
    fn default() -> Self {
        Zrle {
            stream: Compress::new(Compression::fast(), true),
            tiles: Vec::new(),
            values: Vec::new(),
            palette: Vec::new(),
            indices: HashMap::new(),
        }
    }
}

/// Bytes that encode a run of `length` (RFC 6143: 255s, then the rest).
fn run_length_bytes(length: usize) -> usize {
    (length - 1) / 255 + 1
}

fn put_run_length(length: usize, out: &mut Vec<u8>) {
    let mut rest = length - 1;
    while rest >= 255 {
        out.push(255);
        rest -= 255;
    }
    out.push(rest as u8);
}

impl Zrle {
    /// ZRLE data for `rect`: its length, then its tiles through zlib.
    pub fn encode(&mut self, frame: Frame, rect: Rect, format: &PixelFormat, out: &mut Vec<u8>) {
        self.tiles.clear();
        let mut y = rect.y;
        while y < rect.y + rect.height {
            let height = TILE.min(rect.y + rect.height - y);
            let mut x = rect.x;
            while x < rect.x + rect.width {
                let width = TILE.min(rect.x + rect.width - x);
                self.tile(
                    frame,
                    Rect {
                        x,
                        y,
                        width,
                        height,
                    },
                    format,
                );
                x += width;
            }
            y += height;
        }
        let mut compressed = Vec::with_capacity(self.tiles.len() / 2 + 64);
        let mut input = &self.tiles[..];
        loop {
            compressed.reserve(input.len() / 2 + 1024);
            let before_in = self.stream.total_in();
            let status = self
                .stream
                .compress_vec(input, &mut compressed, FlushCompress::Sync);
            let consumed = (self.stream.total_in() - before_in) as usize;
            input = &input[consumed..];
            let room_left = compressed.len() < compressed.capacity();
            if status.is_err() || (input.is_empty() && room_left) {
                break;
            }
        }
        out.extend((compressed.len() as u32).to_be_bytes());
        out.extend(compressed);
    }

    /// One tile, in whichever subencoding is smallest.
    fn tile(&mut self, frame: Frame, tile: Rect, format: &PixelFormat) {
        let cpixel = format.cpixel_bytes();
        let cpixel_len = cpixel.len();
        let put_cpixel = |value: u32, out: &mut Vec<u8>| {
            out.extend_from_slice(&format.bytes(value)[cpixel.clone()]);
        };
        self.values.clear();
        for y in tile.y..tile.y + tile.height {
            let row = frame.row(y, tile.x, tile.width);
            self.values
                .extend(row.iter().map(|&pixel| format.convert(pixel)));
        }
        // The tile's colours (up to 128 are counted) and its runs.
        self.palette.clear();
        self.indices.clear();
        let runs = runs_of(&self.values);
        for &(value, _) in &runs {
            if self.palette.len() <= 127 && !self.indices.contains_key(&value) {
                self.indices.insert(value, self.palette.len() as u8);
                self.palette.push(value);
            }
        }
        let colours = self.palette.len();
        let out = &mut self.tiles;
        if colours == 1 {
            out.push(1);
            put_cpixel(self.palette[0], out);
            return;
        }
        let raw_size = self.values.len() * cpixel_len;
        let run_size: usize = runs
            .iter()
            .map(|&(_, length)| cpixel_len + run_length_bytes(length))
            .sum();
        let packed_bits = match colours {
            2 => 1,
            3..=4 => 2,
            5..=16 => 4,
            _ => 0,
        };
        let packed_size = (packed_bits > 0)
            .then(|| colours * cpixel_len + tile.height * (tile.width * packed_bits).div_ceil(8));
        let palette_run_size = (colours <= 127).then(|| {
            colours * cpixel_len
                + runs
                    .iter()
                    .map(|&(_, length)| {
                        if length == 1 {
                            1
                        } else {
                            1 + run_length_bytes(length)
                        }
                    })
                    .sum::<usize>()
        });
        let sizes = [
            Some(raw_size),
            Some(run_size),
            packed_size,
            palette_run_size,
        ];
        let best = sizes
            .iter()
            .enumerate()
            .filter_map(|(kind, size)| size.map(|size| (size, kind)))
            .min()
            .map_or(0, |(_, kind)| kind);
        match best {
            1 => {
                out.push(128);
                for &(value, length) in &runs {
                    put_cpixel(value, out);
                    put_run_length(length, out);
                }
            }
            2 => {
                out.push(colours as u8);
                for &value in &self.palette {
                    put_cpixel(value, out);
                }
                for row in self.values.chunks(tile.width) {
                    let (mut byte, mut used) = (0u8, 0);
                    for value in row {
                        byte |= self.indices[value] << (8 - packed_bits - used);
                        used += packed_bits;
                        if used == 8 {
                            out.push(byte);
                            (byte, used) = (0, 0);
                        }
                    }
                    if used > 0 {
                        out.push(byte);
                    }
                }
            }
            3 => {
                out.push(128 + colours as u8);
                for &value in &self.palette {
                    put_cpixel(value, out);
                }
                for &(value, length) in &runs {
                    let index = self.indices[&value];
                    if length == 1 {
                        out.push(index);
                    } else {
                        out.push(index | 128);
                        put_run_length(length, out);
                    }
                }
            }
            _ => {
                out.push(0);
                for &value in &self.values {
                    put_cpixel(value, out);
                }
            }
        }
    }
}

/// Runs of equal values: (value, length).
fn runs_of(values: &[u32]) -> Vec<(u32, usize)> {
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for &value in values {
        match runs.last_mut() {
            Some((last, length)) if *last == value => *length += 1,
            _ => runs.push((value, 1)),
        }
    }
    runs
}
