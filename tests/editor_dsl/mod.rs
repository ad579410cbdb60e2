//! A small Graphite-style test DSL over `Editor`: each helper sends one `EditorMessage`
//! through `Editor::update` and checks it succeeded, so tests read as user actions.
#![allow(dead_code)] // each test binary uses a different subset

use image::{Rgba, RgbaImage};
use qwen_layered_web::editor::{
    Document, Editor, EditorMessage, Effect, Error, Layer, LayerId, NewLayer,
};

/// An editor under test.
pub struct TestEditor {
    pub editor: Editor,
}

pub fn solid(w: u32, h: u32, rgba: [u8; 4]) -> RgbaImage {
    RgbaImage::from_pixel(w, h, Rgba(rgba))
}

impl TestEditor {
    pub fn new(width: u32, height: u32) -> Self {
        TestEditor {
            editor: Editor::new(width, height).expect("valid test document size"),
        }
    }

    pub fn doc(&self) -> &Document {
        self.editor.document()
    }

    /// Sends a message that must succeed.
    pub fn send(&mut self, msg: EditorMessage) -> Vec<Effect> {
        let shown = format!("{msg:?}");
        self.editor
            .update(msg)
            .unwrap_or_else(|e| panic!("{shown:.200} failed: {e}"))
    }

    /// Sends a message that must fail, and checks the document and history did not change.
    pub fn send_err(&mut self, msg: EditorMessage) -> Error {
        let before = self.doc().clone();
        let (undo, redo) = (self.editor.can_undo(), self.editor.can_redo());
        let shown = format!("{msg:?}");
        let err = match self.editor.update(msg) {
            Ok(fx) => panic!("{shown:.200} should fail, gave {fx:?}"),
            Err(e) => e,
        };
        assert_eq!(self.doc(), &before, "a failed message changed the document");
        assert_eq!(
            (self.editor.can_undo(), self.editor.can_redo()),
            (undo, redo)
        );
        err
    }

    /// Adds one layer at `(x, y)` and returns its id.
    pub fn add(&mut self, name: &str, image: RgbaImage, x: i32, y: i32) -> LayerId {
        self.send(EditorMessage::AddLayers {
            layers: vec![NewLayer {
                name: name.into(),
                image,
                x,
                y,
            }],
        });
        self.doc().layers.last().expect("just added").id
    }

    /// Adds a `w x h` layer of one colour at `(x, y)`.
    pub fn add_solid(
        &mut self,
        name: &str,
        w: u32,
        h: u32,
        rgba: [u8; 4],
        x: i32,
        y: i32,
    ) -> LayerId {
        self.add(name, solid(w, h, rgba), x, y)
    }

    pub fn layer(&self, id: LayerId) -> &Layer {
        self.doc().layer(id).expect("layer exists")
    }

    pub fn ids(&self) -> Vec<LayerId> {
        self.doc().layers.iter().map(|l| l.id).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.doc().layers.iter().map(|l| l.name.clone()).collect()
    }

    pub fn select(&mut self, id: Option<LayerId>) -> Vec<Effect> {
        self.send(EditorMessage::Select { id })
    }

    pub fn set_visible(&mut self, id: LayerId, visible: bool) -> Vec<Effect> {
        self.send(EditorMessage::SetVisibility { id, visible })
    }

    pub fn set_opacity(&mut self, id: LayerId, opacity: f32) -> Vec<Effect> {
        self.send(EditorMessage::SetOpacity { id, opacity })
    }

    pub fn rename(&mut self, id: LayerId, name: &str) -> Vec<Effect> {
        self.send(EditorMessage::Rename {
            id,
            name: name.into(),
        })
    }

    pub fn reorder(&mut self, from: usize, to: usize) -> Vec<Effect> {
        self.send(EditorMessage::Reorder { from, to })
    }

    pub fn duplicate(&mut self, id: LayerId) -> LayerId {
        self.send(EditorMessage::Duplicate { id });
        self.doc().selected.expect("the copy is selected")
    }

    pub fn delete(&mut self, id: LayerId) -> Vec<Effect> {
        self.send(EditorMessage::Delete { id })
    }

    pub fn merge_down(&mut self, id: LayerId) -> Vec<Effect> {
        self.send(EditorMessage::MergeDown { id })
    }

    pub fn move_by(&mut self, id: LayerId, dx: i32, dy: i32) -> Vec<Effect> {
        self.send(EditorMessage::Move { id, dx, dy })
    }

    pub fn nudge(&mut self, dx: i32, dy: i32) -> Vec<Effect> {
        self.send(EditorMessage::Nudge { dx, dy })
    }

    pub fn scale(&mut self, id: LayerId, scale: f32) -> Vec<Effect> {
        self.send(EditorMessage::SetScale { id, scale })
    }

    pub fn replace_with_sublayers(&mut self, id: LayerId, layers: Vec<NewLayer>) -> Vec<Effect> {
        self.send(EditorMessage::ReplaceWithSublayers { id, layers })
    }

    pub fn undo(&mut self) -> Vec<Effect> {
        self.send(EditorMessage::Undo)
    }

    pub fn redo(&mut self) -> Vec<Effect> {
        self.send(EditorMessage::Redo)
    }
}
