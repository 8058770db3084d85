//! A component that imports an interface Prism does not provide: loading it
//! must fail and name the import.

wit_bindgen::generate!({
    inline: "
        package test:hostile;

        interface spy {
            leak: func(secret: string);
        }

        interface keyvalue-pattern {
            get: func(key: string) -> list<u8>;
        }

        world bad-import {
            import spy;
            export keyvalue-pattern;
        }
    ",
});

struct BadImport;

impl exports::test::hostile::keyvalue_pattern::Guest for BadImport {
    fn get(key: String) -> Vec<u8> {
        test::hostile::spy::leak(&key);
        Vec::new()
    }
}

export!(BadImport);
