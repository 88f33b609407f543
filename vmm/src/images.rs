//! Guest images: the ones built into the binary from `guest-servers/`, or ELF files.

use std::borrow::Cow;

use crate::topology::ImageSource;

include!(concat!(env!("OUT_DIR"), "/builtin_images.rs"));

/// Names of the built-in images.
pub fn builtin_names() -> Vec<String> {
    BUILTIN_IMAGES.iter().map(|(n, _)| n.to_string()).collect()
}

/// The bytes of an image.
pub fn read(source: &ImageSource) -> std::io::Result<Cow<'static, [u8]>> {
    match source {
        ImageSource::BuiltIn(name) => BUILTIN_IMAGES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| Cow::Borrowed(*b))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no built-in image `{name}`"),
                )
            }),
        ImageSource::File(path) => std::fs::read(path).map(Cow::Owned),
    }
}
