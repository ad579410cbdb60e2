//! The two captioning chat prompts of `QwenImageLayeredPipeline` (diffusers 0.42.1,
//! `pipeline_qwenimage_layered.py:224-238`), verbatim: the reference's triple-quoted strings
//! contain real line breaks where the source wraps, besides the `\\n` escapes.
//! `tests/native/caption_parity.rs` compares them with the strings the fixture generator read from
//! the pipeline (`tests/fixtures/caption/templates.json`).

/// Which of the two templates (`use_en_prompt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptionLanguage {
    /// `image_caption_prompt_en` (`use_en_prompt=True`, what the official app uses).
    #[default]
    English,
    /// `image_caption_prompt_cn` (the pipeline's default, `use_en_prompt=False`).
    Chinese,
}

impl CaptionLanguage {
    /// The chat prompt, with one `<|image_pad|>` where the image goes.
    pub fn template(self) -> &'static str {
        match self {
            Self::English => CAPTION_PROMPT_EN,
            Self::Chinese => CAPTION_PROMPT_CN,
        }
    }
}

/// `image_caption_prompt_en`.
pub const CAPTION_PROMPT_EN: &str = "<|im_start|>system\n\
You are a helpful assistant.<|im_end|>\n\
<|im_start|>user\n\
# Image Annotator\n\
You are a professional\n\
image annotator. Please write an image caption based on the input image:\n\
1. Write the caption using natural,\n\
descriptive language without structured formats or rich text.\n\
2. Enrich caption details by including: \n\
\x20- Object\n\
attributes, such as quantity, color, shape, size, material, state, position, actions, and so on\n\
\x20- Vision Relations\n\
between objects, such as spatial relations, functional relations, possessive relations, attachment relations, action\n\
relations, comparative relations, causal relations, and so on\n\
\x20- Environmental details, such as weather, lighting,\n\
colors, textures, atmosphere, and so on\n\
\x20- Identify the text clearly visible in the image, without translation or\n\
explanation, and highlight it in the caption with quotation marks\n\
3. Maintain authenticity and accuracy:\n\
\x20- Avoid\n\
generalizations\n\
\x20- Describe all visible information in the image, while do not add information not explicitly shown in\n\
the image\n\
<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n\
<|im_start|>assistant\n\
";

/// `image_caption_prompt_cn`.
pub const CAPTION_PROMPT_CN: &str = "<|im_start|>system\n\
You are a helpful assistant.<|im_end|>\n\
<|im_start|>user\n\
# 图像标注器\n\
你是一个专业的图像标注器。请基于输入图像，撰写图注:\n\
1.\n\
使用自然、描述性的语言撰写图注，不要使用结构化形式或富文本形式。\n\
2. 通过加入以下内容，丰富图注细节：\n\
\x20- 对象的属性：如数量、颜色、形状、大小、位置、材质、状态、动作等\n\
\x20-\n\
对象间的视觉关系：如空间关系、功能关系、动作关系、从属关系、比较关系、因果关系等\n\
\x20- 环境细节：例如天气、光照、颜色、纹理、气氛等\n\
\x20- 文字内容：识别图像中清晰可见的文字，不做翻译和解释，用引号在图注中强调\n\
3.\n\
保持真实性与准确性：\n\
\x20- 不要使用笼统的描述\n\
\x20-\n\
描述图像中所有可见的信息，但不要加入没有在图像中出现的内容\n\
<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n\
<|im_start|>assistant\n\
";
