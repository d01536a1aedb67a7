//! `#[task]` and `export_tasks!` for celeriac-sdk. Use them through
//! `celeriac_sdk`, not directly.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{FnArg, Ident, ItemFn, LitStr, Pat, Path, ReturnType, Token, Type, parse_macro_input};

/// Turn a plain typed function into a task.
///
/// Parameters are bound from the JSON `args` array by position and from the
/// `kwargs` object by name; `Option` parameters may be left out. The return
/// value must implement `serde::Serialize`; a `Result` return maps `Err` to
/// a failure through `Into<celeriac_sdk::Error>`.
///
/// `#[task(name = "other-name")]` serves the task under another name.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let options = parse_macro_input!(attr as TaskOptions);
    let func = parse_macro_input!(item as ItemFn);
    match expand_task(options, func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Export the listed `#[task]` functions as this component's module:
/// `celeriac_sdk::export_tasks!(add, mul, strings::upper);`
#[proc_macro]
pub fn export_tasks(input: TokenStream) -> TokenStream {
    let paths = parse_macro_input!(input with Punctuated::<Path, Token![,]>::parse_terminated);
    let descriptors: Vec<Path> = paths.iter().map(descriptor_path).collect();
    quote! {
        #[doc(hidden)]
        struct __CeleriacModule;

        impl __CeleriacModule {
            const TASKS: &'static [(&'static str, fn(&str, &str) -> ::core::result::Result<::std::string::String, ::celeriac_sdk::__private::Failure>)] = &[
                #( (#descriptors::NAME, #descriptors::call) ),*
            ];
        }

        impl ::celeriac_sdk::__private::Guest for __CeleriacModule {
            fn tasks() -> ::std::vec::Vec<::std::string::String> {
                Self::TASKS.iter().map(|(name, _)| (*name).to_string()).collect()
            }

            fn call(
                name: ::std::string::String,
                args: ::std::string::String,
                kwargs: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, ::celeriac_sdk::__private::Failure> {
                match Self::TASKS.iter().find(|(n, _)| *n == name) {
                    Some((_, f)) => f(&args, &kwargs),
                    None => {
                        let known: ::std::vec::Vec<&str> = Self::TASKS.iter().map(|(n, _)| *n).collect();
                        Err(::celeriac_sdk::__private::unknown_task(&name, &known))
                    }
                }
            }
        }

        ::celeriac_sdk::__private::bindings::export!(__CeleriacModule);
    }
    .into()
}

struct TaskOptions {
    name: Option<LitStr>,
}

impl Parse for TaskOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut name = None;
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            if key == "name" {
                name = Some(input.parse()?);
            } else {
                return Err(syn::Error::new(
                    key.span(),
                    "unknown option; expected `name`",
                ));
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(Self { name })
    }
}

/// The hidden module `#[task]` generates beside a function `f` is
/// `__celeriac_task_f`; rewrite the last segment of a path to point at it.
fn descriptor_path(path: &Path) -> Path {
    let mut path = path.clone();
    if let Some(last) = path.segments.last_mut() {
        last.ident = descriptor_ident(&last.ident);
    }
    path
}

fn descriptor_ident(func: &Ident) -> Ident {
    format_ident!("__celeriac_task_{}", func)
}

fn expand_task(options: TaskOptions, func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let ident = &func.sig.ident;
    if func.sig.asyncness.is_some() {
        return Err(syn::Error::new_spanned(
            func.sig.asyncness,
            "tasks are synchronous functions",
        ));
    }
    if !func.sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &func.sig.generics,
            "tasks cannot be generic: the host calls them by name with JSON arguments",
        ));
    }
    let task_name = options
        .name
        .map(|n| n.value())
        .unwrap_or_else(|| ident.to_string());

    let mut names = Vec::new();
    let mut bindings = Vec::new();
    let mut arg_idents = Vec::new();
    for (index, arg) in func.sig.inputs.iter().enumerate() {
        let FnArg::Typed(pat_type) = arg else {
            return Err(syn::Error::new_spanned(
                arg,
                "tasks are free functions, not methods",
            ));
        };
        let Pat::Ident(pat_ident) = &*pat_type.pat else {
            return Err(syn::Error::new_spanned(
                &pat_type.pat,
                "task parameters must be plain names: they are matched against kwargs",
            ));
        };
        let name = pat_ident.ident.to_string();
        let name = name.strip_prefix("r#").unwrap_or(&name).to_string();
        let ty = &pat_type.ty;
        let local = format_ident!("__arg{}", index);
        bindings.push(quote! { let #local: #ty = __input.take(#index)?; });
        names.push(LitStr::new(&name, Span::call_site()));
        arg_idents.push(local);
    }

    let encode = if returns_result(&func.sig.output) {
        quote! { ::celeriac_sdk::__private::encode_result(super::#ident(#(#arg_idents),*)) }
    } else {
        quote! { ::celeriac_sdk::__private::encode_output(super::#ident(#(#arg_idents),*)) }
    };
    let module = descriptor_ident(ident);
    let vis = &func.vis;

    Ok(quote! {
        #func

        #[doc(hidden)]
        #[allow(non_snake_case)]
        #vis mod #module {
            #[allow(unused_imports)]
            use super::*;

            pub const NAME: &str = #task_name;
            const PARAMS: &[&str] = &[#(#names),*];

            pub fn call(
                args: &str,
                kwargs: &str,
            ) -> ::core::result::Result<::std::string::String, ::celeriac_sdk::__private::Failure> {
                #[allow(unused_mut)]
                let mut __input = ::celeriac_sdk::__private::Input::parse(NAME, PARAMS, args, kwargs)?;
                #(#bindings)*
                #encode
            }
        }
    })
}

/// A return type whose last path segment is `Result` is treated as fallible.
fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
    }
}
