//! A well-formed component that exports none of Prism's pattern worlds:
//! loading it must fail and say which world it does not fit.

wit_bindgen::generate!({
    inline: "
        package test:hostile;

        world wrong-world {
            export run: func() -> u32;
        }
    ",
});

struct WrongWorld;

impl Guest for WrongWorld {
    fn run() -> u32 {
        42
    }
}

export!(WrongWorld);
